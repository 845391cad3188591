"""`python -m trivpn.bench vpn`: trivpn's client against OpenVPN's own, same server, same run.

For every cell (transport × data cipher) the benchmark creates a fresh pair of network
namespaces, starts Debian's openvpn server in one and an iperf3 server beside it, then runs
the two clients in the other namespace *alternately* (trivpn first in even rounds, OpenVPN
first in odd ones) so slow drift of the machine hits both alike. Each client run is measured
by `trivpn.bench.probe` inside the client namespace. Medians over rounds are reported with
the trivpn/OpenVPN ratio, printed as a table, written as JSON and drawn as a PNG chart (when
matplotlib, the `bench` extra, is installed).

Traffic only ever flows inside the namespaces created here, and every loop is bounded by a
count and a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trivpn.bench.machine import describe_machine, machine_report
from trivpn.bench.vpnstats import METRICS, drop_pct, per_gb, percentile, run_metrics, summarize
from trivpn.records import dataclass

if TYPE_CHECKING:
    from trivpn.testing import ServerOptions

# the statistics live in vpnstats; `bench ab`, pairrtt and the tests reach them through here
__all__ = ["CLIENTS", "METRICS", "Cell", "Plan", "drop_pct", "main", "parse_args", "per_gb",
           "percentile", "run_metrics", "summarize"]

#: Variants for A/B runs: "trivpn-trio" is trivpn with `--no-data-threads` (data packets in
#: trio tasks), "trivpn-lowlat" is trivpn with `--low-latency`.
CLIENT_FLAGS = {"trivpn": [], "trivpn-trio": ["--no-data-threads"], "trivpn-lowlat": ["--low-latency"]}
CLIENTS = ("trivpn", "openvpn", "openvpn-default", "trivpn-trio", "trivpn-lowlat")
#: trivpn sets TCP_NODELAY on a TCP transport; for a like-for-like TCP cell OpenVPN's client
#: ("openvpn") gets the same socket flag. "openvpn-default" is OpenVPN as shipped (Nagle on),
#: reported beside it; on UDP the two are the same program and only "openvpn" runs.
OPENVPN_TCP_FLAGS = ["--socket-flags", "TCP_NODELAY"]
#: The OpenVPN server's end of a TCP cell can set it too, as `trivpn serve` does on every
#: connection it accepts. Without it the server's Nagle held echo replies behind an unacked
#: segment, and whole rounds of `bench rtt` measured ≈ 24 ms for *both* clients
#: (docs/performance.md, "The server's Nagle in the TCP cells").
SERVER_TCP_LINES = ["socket-flags TCP_NODELAY"]
#: `--server-tcp`: "shipped" runs the server's TCP socket as OpenVPN ships it (Nagle on), the
#: `bench vpn` default, which keeps throughput comparable with every earlier table (against
#: "nodelay" trivpn's client spent 16–30 % more CPU per GB uploaded in two same-hour A/Bs);
#: "nodelay" adds `SERVER_TCP_LINES`, the `bench rtt` default.
SERVER_TCP_MODES = ("shipped", "nodelay")
TRANSPORTS = ("udp", "tcp")
CIPHERS = ("AES-256-GCM", "CHACHA20-POLY1305")
#: Extra seconds a probe may take beyond its planned workload before it is killed.
PROBE_SLACK = 90.0
#: Seconds the iperf3 server gets to start listening.
IPERF_START = 5.0


@dataclass(frozen=True, slots=True)
class Cell:
    transport: str
    cipher: str

    @property
    def name(self) -> str:
        return f"{self.transport}/{self.cipher}"

    @property
    def slug(self) -> str:
        return f"{self.transport}-{self.cipher.lower()}"


#: Modules `trivpn connect` imports; compiled once before measuring (see `_bytecode_env`).
#: Everything a client run imports, including what is imported lazily on the way to "tunnel
#: up" (an installed copy has all of it compiled by pip; see `_bytecode_env`).
WARM_IMPORTS = (
    "import base64, binascii, getpass\n"
    "import trivpn.api, trivpn.cli, trivpn.client, trivpn.tun.linux, trivpn.tun.netconfig\n"
    "import OpenSSL._util\n"
)


@dataclass(slots=True)
class Plan:
    rounds: int
    seconds: float
    omit: int
    pings: int
    cells: list[Cell]
    clients: tuple[str, ...]
    out: Path
    pycache: Path | None = None
    #: iperf3's TCP congestion control (-C); None: the namespaces' default, which they
    #: inherit from the machine (`machine.tcp_congestion_control` in the JSON)
    congestion: str | None = None
    #: TCP cells: the OpenVPN server as shipped (Nagle on) instead of `SERVER_TCP_LINES`
    server_nagle: bool = True

    @property
    def server_tcp_lines(self) -> list[str]:
        """What the server's config adds in TCP cells (recorded in the JSON)."""
        return [] if self.server_nagle else list(SERVER_TCP_LINES)


# ---------------------------------------------------------------------------------------
# running


def _bytecode_env(plan: Plan) -> dict[str, str | None]:
    """Let the trivpn client use compiled bytecode, as an installed copy does.

    A checkout run with PYTHONDONTWRITEBYTECODE set would recompile every module at each
    start and add that to start → ping; a private PYTHONPYCACHEPREFIX keeps the work tree
    clean.
    """
    if plan.pycache is None:
        return {}
    return {"PYTHONDONTWRITEBYTECODE": None, "PYTHONPYCACHEPREFIX": str(plan.pycache)}


def _client_spec(client: str, cell: Cell, profile: Path, target: str, plan: Plan) -> dict[str, Any]:
    env: dict[str, str | None] = {}
    if client.startswith("trivpn"):
        argv = [sys.executable, "-m", "trivpn", "connect", str(profile), *CLIENT_FLAGS[client]]
        up, conn, stop = "tunnel up", "connecting to", signal.SIGINT
        env = _bytecode_env(plan)
    else:
        argv = ["openvpn", "--config", str(profile)]
        if client == "openvpn" and cell.transport == "tcp":
            argv += OPENVPN_TCP_FLAGS
        up = "Initialization Sequence Completed"
        conn = "link remote" if cell.transport == "udp" else "Attempting to establish TCP"
        stop = signal.SIGTERM
    return {
        "client": client,
        "argv": argv,
        "up_line": up,
        "connect_line": conn,
        "target": target,
        "seconds": plan.seconds,
        "omit": plan.omit,
        "congestion": plan.congestion,
        "pings": plan.pings,
        "stop_signal": int(stop),
        "env": env,
    }


def _probe(ns: Any, spec: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Run one measured client session in namespace `ns`; never raises for a failed run."""
    budget = 3 * (plan.seconds + plan.omit) + plan.seconds + 1 + PROBE_SLACK
    proc = ns.popen(
        [sys.executable, "-m", "trivpn.bench.probe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(json.dumps(spec), timeout=budget)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"client": spec["client"], "ok": False, "error": f"probe timed out after {budget:g} s"}
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"client": spec["client"], "ok": False, "error": f"probe failed: {err.strip()[-500:]}"}
    return result


def cell_clients(cell: Cell, clients: tuple[str, ...]) -> tuple[str, ...]:
    """The clients that run in `cell` ("openvpn-default" only where it differs: TCP)."""
    return tuple(c for c in clients if not (c == "openvpn-default" and cell.transport != "tcp"))


def add_server_tcp_option(p: argparse.ArgumentParser, default: str) -> None:
    """`--server-tcp`, with this benchmark's default."""
    p.add_argument(
        "--server-tcp", choices=SERVER_TCP_MODES, default=default,
        help=f"TCP cells: the OpenVPN server's socket as shipped (Nagle on) or with TCP_NODELAY, "
        f"as trivpn serve sets it (default {default})",
    )


def server_options(cell: Cell, *, nagle: bool) -> ServerOptions:
    """The reference server's options for `cell` (shared with `bench rtt`); `nagle`: on TCP,
    the server as shipped, without `SERVER_TCP_LINES`."""
    from trivpn.testing import ServerOptions

    extra = SERVER_TCP_LINES if cell.transport == "tcp" and not nagle else []
    return ServerOptions(proto=cell.transport, wrap="tls-crypt", data_ciphers=cell.cipher, extra=list(extra))


def run_cell(cell: Cell, plan: Plan, pki: Any, workdir: Path) -> list[dict[str, Any]]:
    from trivpn.testing import OpenVPNServer, client_profile, netns_pair

    opts = server_options(cell, nagle=plan.server_nagle)
    runs: list[dict[str, Any]] = []
    with netns_pair(prefix="tvb") as pair:
        server = OpenVPNServer(
            pair.server, pki, opts, workdir / cell.slug, listen_v4=pair.server_v4
        )
        server.start()
        iperf = pair.server.popen(
            ["iperf3", "-s"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(pair.server, 5201)
            profile = workdir / cell.slug / "client.ovpn"
            profile.write_text(client_profile(pki, opts, server.remote_host))
            clients = cell_clients(cell, plan.clients)
            for rnd in range(plan.rounds):
                order = clients if rnd % 2 == 0 else tuple(reversed(clients))
                for client in order:
                    done = len(runs) + 1
                    print(f"  [{cell.name} round {rnd + 1}/{plan.rounds}, run {done}/{plan.rounds * len(clients)}] "
                          f"{client}: start-up, pings, iperf3 up and down "
                          f"(~{3 * (plan.seconds + plan.omit) + 2:.0f} s) ...", flush=True)
                    spec = _client_spec(client, cell, profile, server.tunnel_v4, plan)
                    if server.pid is not None:
                        spec["server_pid"] = server.pid  # its CPU during each iperf3 run
                        if cell.transport == "udp":
                            # the server namespace's UDP counters, readable from the client's
                            spec["server_snmp"] = f"/proc/{server.pid}/net/snmp"
                    res = _probe(pair.client, spec, plan)
                    res["round"] = rnd
                    res["cell"] = cell.name
                    runs.append(res)
                    _report_run(res)
        finally:
            iperf.terminate()
            try:
                iperf.wait(timeout=5)
            except subprocess.TimeoutExpired:
                iperf.kill()
                iperf.wait()
            server.stop()
    return runs


def _warm_bytecode(plan: Plan) -> None:
    env = dict(os.environ)
    for name, value in _bytecode_env(plan).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    subprocess.run([sys.executable, "-c", WARM_IMPORTS], env=env, check=True, timeout=60)


def _wait_listening(ns: Any, port: int) -> None:
    deadline = time.monotonic() + IPERF_START
    while time.monotonic() < deadline:
        r = ns.run(["ss", "-Htln", f"sport = :{port}"], check=False)
        if r.stdout.strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"iperf3 server did not listen on port {port} within {IPERF_START:g} s")


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if unit in ("Mbit/s", "per run"):
        return f"{v:.0f}"
    if unit == "s":
        return f"{v:.3f}"
    if unit in ("ms", "s/GB", "MB"):
        return f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return f"{v:.2f}"


def _report_run(res: dict[str, Any]) -> None:
    if not res.get("ok"):
        print(f"  {res['cell']} round {res['round']} {res['client']}: FAILED {res.get('error')}",
              flush=True)
        if res.get("tail"):
            print("    " + res["tail"].replace("\n", "\n    "), flush=True)
        return
    m = run_metrics(res)
    print(
        f"  {res['cell']} round {res['round']} {res['client']:13s} "
        f"tx {_fmt(m['tx_mbps'], 'Mbit/s')} rx {_fmt(m['rx_mbps'], 'Mbit/s')} Mbit/s, "
        f"start→ping {_fmt(m['start_to_ping_s'], 's')} s, "
        f"rtt {_fmt(m['rtt_idle_p50'], 'ms')}/{_fmt(m['rtt_load_p50'], 'ms')} ms "
        f"(idle cpu {_fmt(m['idle_cpu_pct'])} %), "
        f"cpu {_fmt(m['cpu_s_per_gb'], 's/GB')} s/GB, rss {_fmt(m['peak_rss_mb'], 'MB')} MB"
        + (f", drops {_fmt(m['udp_drops_up_pct'])}/{_fmt(m['udp_drops_down_pct'])} %"
           if m["udp_drops_up_pct"] is not None else ""),
        flush=True,
    )


def format_table(results: dict[str, Any], clients: tuple[str, ...]) -> str:
    """A Markdown table: one block of rows per cell, medians and the ratio."""
    head = ["cell", "metric", *clients]
    with_ratio = "trivpn" in clients and "openvpn" in clients
    if with_ratio:
        head.append("ratio trivpn/openvpn")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell_name, cell in results.items():
        for m, (label, unit, _higher) in METRICS.items():
            row = [cell_name, f"{label} ({unit})"]
            row += [_fmt(cell["medians"].get(c, {}).get(m), unit) for c in clients]
            if with_ratio:
                r = cell["ratios"].get(m)
                row.append("—" if r is None else f"{r:.2f}×")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def draw_chart(results: dict[str, Any], clients: tuple[str, ...], path: Path) -> bool:
    """Write a PNG (throughput, start → ping, RTT); False if matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cells = list(results)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    width = 0.8 / (2 * len(clients))
    ax = axes[0]
    for i, client in enumerate(clients):
        for j, (metric, tag) in enumerate((("tx_mbps", "up"), ("rx_mbps", "down"))):
            vals = [results[c]["medians"].get(client, {}).get(metric) or 0 for c in cells]
            xs = [k + (2 * i + j) * width - 0.4 + width / 2 for k in range(len(cells))]
            ax.bar(xs, vals, width, label=f"{client} {tag}", alpha=1.0 if j == 0 else 0.6)
    ax.set_xticks(range(len(cells)), cells, rotation=15, fontsize=8)
    ax.set_ylabel("Mbit/s (iperf3 TCP through the tunnel)")
    ax.set_title("throughput (higher is better)")
    ax.legend(fontsize=8)
    for ax, metrics, title, unit in (
        (axes[1], ("start_to_ping_s", "handshake_s"), "start → ping, handshake", "s"),
        (axes[2], ("rtt_idle_p50", "rtt_load_p50"), "ping RTT p50 idle / under load", "ms"),
    ):
        for i, client in enumerate(clients):
            for j, metric in enumerate(metrics):
                vals = [results[c]["medians"].get(client, {}).get(metric) or 0 for c in cells]
                xs = [k + (2 * i + j) * width - 0.4 + width / 2 for k in range(len(cells))]
                ax.bar(xs, vals, width, label=f"{client} {METRICS[metric][0]}",
                       alpha=1.0 if j == 0 else 0.6)
        ax.set_xticks(range(len(cells)), cells, rotation=15, fontsize=8)
        ax.set_ylabel(unit)
        ax.set_title(f"{title} (lower is better)")
        ax.legend(fontsize=7)
    axes[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the benchmark needs root (network namespaces, TUN devices)"
    for tool in ("ip", "openvpn", "iperf3", "ping", "ss"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found on PATH (apt-get install openvpn iperf3 iproute2 iputils-ping)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def available_congestion() -> list[str]:
    """The TCP congestion controls this kernel offers (loaded or loadable ones it lists)."""
    try:
        return Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    except OSError:
        return []


def parse_args(argv: list[str] | None) -> Plan:
    p = argparse.ArgumentParser(
        prog="python -m trivpn.bench vpn",
        description="trivpn's client vs OpenVPN's own against Debian's openvpn server (needs root).",
    )
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds per cell (default 3; --quick: 1)")
    p.add_argument("--quick", action="store_true", help="a short run: 1 round, 2 s iperf3 runs")
    p.add_argument("--seconds", type=float, default=None, help="seconds per iperf3 run (default 5; --quick: 2)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for JSON and PNG")
    p.add_argument(
        "--cells", default="all",
        help="comma-separated cells, e.g. udp-aes-256-gcm,tcp-chacha20-poly1305 (default all)",
    )
    p.add_argument(
        "--clients", default="trivpn,openvpn,openvpn-default",
        help="comma-separated, in order: trivpn, openvpn (on TCP with TCP_NODELAY like trivpn), "
        "openvpn-default (OpenVPN as shipped; TCP cells only), trivpn-trio (trivpn "
        "--no-data-threads), trivpn-lowlat (trivpn --low-latency)",
    )
    p.add_argument(
        "--congestion", default=None, metavar="ALGO",
        help="the inner TCP's congestion control for every iperf3 run (iperf3 -C), e.g. cubic "
        "or bbr; default the machine's (recorded in the JSON)",
    )
    add_server_tcp_option(p, "shipped")
    a = p.parse_args(argv)
    if a.congestion is not None and a.congestion not in available_congestion():
        p.error(f"--congestion {a.congestion!r}: this kernel offers "
                f"{', '.join(available_congestion()) or 'none'}")
    cells = [Cell(t, c) for t in TRANSPORTS for c in CIPHERS]
    if a.cells != "all":
        wanted = {s.strip().lower() for s in a.cells.split(",") if s.strip()}
        unknown = wanted - {c.slug for c in cells}
        if unknown:
            p.error(f"unknown cell(s) {', '.join(sorted(unknown))}; known: {', '.join(c.slug for c in cells)}")
        cells = [c for c in cells if c.slug in wanted]
    clients = tuple(c.strip() for c in a.clients.split(",") if c.strip())
    if not clients or any(c not in CLIENTS for c in clients):
        p.error(f"--clients takes a comma-separated subset of {','.join(CLIENTS)}")
    rounds = a.rounds if a.rounds is not None else (1 if a.quick else 3)
    seconds = a.seconds if a.seconds is not None else (2.0 if a.quick else 5.0)
    if not 1 <= rounds <= 50:
        p.error("--rounds must be 1..50")
    if not 0.5 <= seconds <= 120:
        p.error("--seconds must be 0.5..120")
    return Plan(
        rounds=rounds,
        seconds=seconds,
        omit=0 if a.quick else 1,
        pings=50 if a.quick else 200,
        cells=cells,
        clients=clients,
        out=a.out,
        congestion=a.congestion,
        server_nagle=a.server_tcp == "shipped",
    )


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    missing = _missing_requirements()
    if missing:
        print(f"trivpn.bench vpn: error: {missing}", file=sys.stderr)
        return 1
    from trivpn.testing import generate_pki

    machine = describe_machine()
    print(machine_report(machine), flush=True)
    print(f"plan: {plan.rounds} round(s), {plan.seconds:g} s per iperf3 run, cells "
          f"{', '.join(c.name for c in plan.cells)}, clients {', '.join(plan.clients)}, inner TCP "
          f"{plan.congestion or machine.get('tcp_congestion_control')}", flush=True)
    pki = generate_pki()
    started = time.monotonic()
    results: dict[str, Any] = {}
    all_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trivpn-bench-") as tmp:
        plan.pycache = Path(tmp) / "pycache"
        _warm_bytecode(plan)
        for index, cell in enumerate(plan.cells, 1):
            print(f"cell {index}/{len(plan.cells)}: {cell.name}", flush=True)
            runs = run_cell(cell, plan, pki, Path(tmp))
            all_runs.extend(runs)
            results[cell.name] = summarize(runs, cell_clients(cell, plan.clients))
    elapsed = time.monotonic() - started
    table = format_table(results, plan.clients)
    print()
    print(table)
    plan.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": machine,
        "plan": {
            "rounds": plan.rounds,
            "seconds": plan.seconds,
            "omit": plan.omit,
            "pings": plan.pings,
            "cells": [c.name for c in plan.cells],
            "clients": list(plan.clients),
            "congestion": plan.congestion or machine.get("tcp_congestion_control"),
            "server_tcp_lines": plan.server_tcp_lines,
            "elapsed_s": round(elapsed, 1),
        },
        "results": results,
        "runs": all_runs,
    }
    json_path = plan.out / "bench-vpn.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    (plan.out / "bench-vpn.md").write_text(table + "\n")
    png = plan.out / "bench-vpn.png"
    drawn = draw_chart(results, plan.clients, png)
    print(f"\nwrote {json_path}" + (f" and {png}" if drawn else
          " (no chart: pip install 'trivpn[bench]' for matplotlib)") + f" in {elapsed:.0f} s")
    failed = [r for r in all_runs if not r.get("ok")]
    if failed:
        print(f"{len(failed)} run(s) failed", file=sys.stderr)
        return 1
    return 0
