"""`python -m trivpn.bench server`: `trivpn serve` against `openvpn --server`, same run.

Both servers read the *same* server.conf (an ordinary OpenVPN 2.6 server configuration) in a
fresh server namespace, one after the other, and face the same clients:

* **throughput**: 1 and 4 of Debian's openvpn clients, each in its own namespace, run iperf3
  at once against the server's tunnel address, upload then download; the aggregate receiver
  rate is reported with the server process's CPU seconds per GB moved (from /proc).
* **idle clients**: `--idle N` userspace trivpn sessions (from a few `trivpn.bench.idlepool`
  processes in the client namespace, so their memory is not the server's) connect at once;
  reported: how long until all were up (new clients per second) and the server's RSS growth
  per connected client (VmRSS from /proc before and after).

Medians are not needed: each figure is one measurement per server per run, printed with the
trivpn/OpenVPN ratio, written as JSON and Markdown. Traffic stays inside the namespaces
created here; every wait has a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import field
from pathlib import Path
from typing import Any

from trivpn.bench.machine import describe_machine, machine_report
from trivpn.bench.probe import IPERF_ATTEMPTS, IPERF_BUSY_WAIT
from trivpn.records import dataclass

SERVERS = ("trivpn", "openvpn")
#: Seconds a server gets to come up, and each client to connect.
UP_TIMEOUT = 60.0
READY = "Initialization Sequence Completed"
TUNNEL_ADDR = "10.8.0.1"
IPERF_BASE_PORT = 5201


@dataclass(slots=True)
class Plan:
    seconds: float
    clients: tuple[int, ...]
    idle: int
    pools: int
    out: Path
    servers: tuple[str, ...] = SERVERS
    extra: dict[str, Any] = field(default_factory=dict)


def server_conf(workdir: Path, local: str, pki: Any) -> Path:
    """One OpenVPN 2.6 server.conf both servers read unchanged."""
    for name, text in {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
                       "ta.key": pki.static_key}.items():
        (workdir / name).write_text(text)
        (workdir / name).chmod(0o600)
    lines = [
        "port 1194", "proto udp", "dev tun", "topology subnet",  # every address: clients on several links
        "server 10.8.0.0 255.255.240.0", "keepalive 10 60", "ca ca.crt", "cert server.crt", "key server.key",
        "dh none", "tls-crypt ta.key", "data-ciphers AES-256-GCM:CHACHA20-POLY1305", "duplicate-cn",
        "max-clients 4000", "connect-freq-initial 100000 10", "verb 1",
    ]
    conf = workdir / "server.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_for(path: Path, text: str, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process exited ({proc.returncode}): {path.read_text(errors='replace')[-800:]}")
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} not in {path.name} after {timeout:.0f} s")


def start_server(kind: str, ns: Any, conf: Path, stack: ExitStack) -> subprocess.Popen[bytes]:
    log = conf.parent / f"{kind}-server.log"
    log.write_text("")
    if kind == "trivpn":
        argv = [sys.executable, "-m", "trivpn", "serve", str(conf)]
    else:
        argv = ["openvpn", "--config", str(conf), "--log", str(log)]
    with log.open("ab") as out:
        proc: subprocess.Popen[bytes] = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=subprocess.STDOUT, cwd=conf.parent)
    stack.callback(_stop, proc)
    _wait_for(log, READY, UP_TIMEOUT, proc)
    return proc


def _stop(proc: subprocess.Popen[Any]) -> None:
    from trivpn.testing.process import stop_process

    stop_process(proc)


def measure_idle(plan: Plan, server: subprocess.Popen[bytes], ns: Any, profile: Path) -> dict[str, Any]:
    """`plan.idle` userspace sessions at once; set-up time and the server's RSS per client."""
    time.sleep(1.0)  # let the server settle after start-up before the baseline
    before = rss_kb(server.pid)
    cpu_before = cpu_seconds(server.pid)
    shares = [plan.idle // plan.pools + (1 if i < plan.idle % plan.pools else 0) for i in range(plan.pools)]
    pools: list[subprocess.Popen[str]] = []
    started = time.monotonic()
    try:
        for share in shares:
            if share:
                pools.append(ns.popen(
                    [sys.executable, "-m", "trivpn.bench.idlepool", str(profile), str(share), "--every", "100000"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        failures: list[str] = []
        for pool in pools:
            assert pool.stdout is not None
            deadline = time.monotonic() + UP_TIMEOUT * 4
            for line in pool.stdout:
                if line.startswith("failed"):
                    failures.append(line.strip())
                if line.startswith("ready") or time.monotonic() > deadline:
                    break
            if len(failures) > 0:
                break
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(server.pid) - cpu_before
        time.sleep(2.0)  # allow the first keepalives and buffers to settle
        after = rss_kb(server.pid)
    finally:
        for pool in pools:
            if pool.stdin is not None:
                pool.stdin.close()
        for pool in pools:
            try:
                pool.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pool.kill()
    ok = not failures
    return {
        "ok": ok, "clients": plan.idle, "failures": failures[:5], "setup_s": round(elapsed, 3),
        "clients_per_s": round(plan.idle / elapsed, 1) if ok else None,
        "setup_cpu_s": round(cpu, 3), "rss_before_kb": before, "rss_after_kb": after,
        "rss_per_client_kb": round((after - before) / plan.idle, 1) if ok else None,
    }


def _iperf_all(spaces: list[Any], count: int, plan: Plan, flag: list[str]) -> list[dict[str, Any]]:
    """One iperf3 run per client, all at once; their JSON documents."""
    runs = [spaces[i][0].popen(
        ["iperf3", "-c", TUNNEL_ADDR, "-p", str(IPERF_BASE_PORT + i), "-t", f"{plan.seconds:g}", "-J", *flag],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(count)]
    docs = []
    for run in runs:
        out, _ = run.communicate(timeout=plan.seconds + 60)
        try:
            docs.append(json.loads(out))
        except ValueError:
            raise RuntimeError(f"iperf3 printed no JSON: {out[-300:]}") from None
    return docs


def measure_throughput(plan: Plan, kind: str, server: subprocess.Popen[bytes], spaces: list[Any],
                       workdir: Path, pki: Any, count: int, stack: ExitStack) -> dict[str, Any]:
    """`count` openvpn clients run iperf3 at once; aggregate rate and server CPU per GB."""
    from trivpn.testing.ovpn_server import ServerOptions, client_profile

    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=1194)
    with ExitStack() as clients:
        logs = []
        for i in range(count):
            ns, remote = spaces[i]
            profile = workdir / f"{kind}-c{count}-{i}.ovpn"
            profile.write_text(client_profile(pki, opts, remote))
            log = workdir / f"{kind}-c{count}-{i}.log"
            log.write_text("")
            proc = ns.popen(["openvpn", "--config", str(profile), "--log", str(log), "--verb", "1"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            clients.callback(_stop, proc)
            logs.append((log, proc))
        for log, proc in logs:
            _wait_for(log, READY, UP_TIMEOUT, proc)
        result: dict[str, Any] = {"clients": count}
        for direction, flag in (("up", []), ("down", ["-R"])):
            for attempt in range(IPERF_ATTEMPTS):
                cpu0 = cpu_seconds(server.pid)
                docs = _iperf_all(spaces, count, plan, flag)
                busy = [d for d in docs if "busy" in str(d.get("error", ""))]
                if not busy:
                    break
                if attempt + 1 == IPERF_ATTEMPTS:
                    raise RuntimeError(f"iperf3: {busy[0]['error']}")
                # iperf3's server runs one test at a time and may still be closing the
                # previous one (the down run follows the up run at once)
                time.sleep(IPERF_BUSY_WAIT)
            total_bps = 0.0
            moved = 0
            for doc in docs:
                if "error" in doc:
                    raise RuntimeError(f"iperf3: {doc['error']}")
                total_bps += doc["end"]["sum_received"]["bits_per_second"]
                moved += int(doc["end"]["sum_received"]["bytes"])
            cpu = cpu_seconds(server.pid) - cpu0
            result[f"{direction}_mbps"] = round(total_bps / 1e6, 1)
            result[f"{direction}_cpu_s_per_gb"] = round(cpu / (moved / 1e9), 2) if moved else None
        return result


def run_server(kind: str, plan: Plan, pki: Any, workdir: Path) -> dict[str, Any]:
    from trivpn.testing.netns import netns_pair, second_client

    res: dict[str, Any] = {"server": kind, "ok": False}
    with ExitStack() as stack:
        pair = stack.enter_context(netns_pair("tb"))
        spaces: list[tuple[Any, str]] = [(pair.client, pair.server_v4)]
        for i in range(1, max(plan.clients, default=1)):
            ns = stack.enter_context(second_client(pair, f"10.201.{i}.1", f"10.201.{i}.2", index=i))
            spaces.append((ns, f"10.201.{i}.1"))
        conf = server_conf(workdir, pair.server_v4, pki)
        server = start_server(kind, pair.server, conf, stack)
        res["idle_rss_kb"] = rss_kb(server.pid)
        for i in range(max(plan.clients, default=0)):
            iperf = pair.server.popen(["iperf3", "-s", "-B", TUNNEL_ADDR, "-p", str(IPERF_BASE_PORT + i)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            stack.callback(_stop, iperf)
        try:
            if plan.idle:
                from trivpn.testing.ovpn_server import ServerOptions, client_profile

                opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=1194)
                profile = workdir / f"{kind}-idle.ovpn"
                profile.write_text(client_profile(pki, opts, pair.server_v4))
                print(f"  {kind}: {plan.idle} idle clients ...", flush=True)
                res["idle"] = measure_idle(plan, server, pair.client, profile)
                print(f"    {json.dumps(res['idle'])}", flush=True)
            res["throughput"] = []
            for count in plan.clients:
                print(f"  {kind}: iperf3 with {count} client(s) ...", flush=True)
                cell = measure_throughput(plan, kind, server, spaces, workdir, pki, count, stack)
                print(f"    {json.dumps(cell)}", flush=True)
                res["throughput"].append(cell)
            res["ok"] = server.poll() is None and res.get("idle", {}).get("ok", True)
        except (RuntimeError, TimeoutError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
            res["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"  {kind}: failed: {res['error']}", flush=True)
    return res


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a and b else "–"


def format_table(results: dict[str, dict[str, Any]], plan: Plan) -> str:
    t, o = results.get("trivpn", {}), results.get("openvpn", {})
    rows = ["| metric | trivpn serve | openvpn --server | ratio |", "|---|---|---|---|"]

    def row(name: str, a: float | None, b: float | None, unit: str = "") -> None:
        fa = "–" if a is None else f"{a:g}{unit}"
        fb = "–" if b is None else f"{b:g}{unit}"
        rows.append(f"| {name} | {fa} | {fb} | {_ratio(a, b)} |")

    for i, count in enumerate(plan.clients):
        ct = (t.get("throughput") or [{}] * len(plan.clients))[i] if i < len(t.get("throughput", [])) else {}
        co = (o.get("throughput") or [{}] * len(plan.clients))[i] if i < len(o.get("throughput", [])) else {}
        for d in ("up", "down"):
            row(f"{count} client(s), {d}, Mbit/s", ct.get(f"{d}_mbps"), co.get(f"{d}_mbps"))
            row(f"{count} client(s), {d}, server CPU s/GB", ct.get(f"{d}_cpu_s_per_gb"), co.get(f"{d}_cpu_s_per_gb"))
    it, io = t.get("idle", {}), o.get("idle", {})
    if plan.idle:
        row(f"{plan.idle} idle clients: set-up rate, clients/s", it.get("clients_per_s"), io.get("clients_per_s"))
        row("server RSS per idle client, KB", it.get("rss_per_client_kb"), io.get("rss_per_client_kb"))
    row("server RSS with no client, KB", t.get("idle_rss_kb"), o.get("idle_rss_kb"))
    return "\n".join(rows)


def draw_chart(results: dict[str, dict[str, Any]], plan: Plan, path: Path) -> bool:
    """A PNG: aggregate throughput per client count, and the idle-client figures; False
    without matplotlib (the `bench` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    servers = [k for k in plan.servers if k in results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    labels = [f"{n} client{'s' if n > 1 else ''} {d}" for n in plan.clients for d in ("up", "down")]
    width = 0.8 / max(1, len(servers))
    for i, kind in enumerate(servers):
        cells = results[kind].get("throughput") or []
        vals = [float(c.get(f"{d}_mbps") or 0) for c in cells for d in ("up", "down")]
        vals += [0.0] * (len(labels) - len(vals))
        axes[0].bar([k + i * width - 0.4 + width / 2 for k in range(len(labels))], vals, width, label=kind)
    axes[0].set_xticks(range(len(labels)), labels, fontsize=8)
    axes[0].set_ylabel("Mbit/s, all clients together (iperf3)")
    axes[0].set_title("aggregate throughput (higher is better)")
    axes[0].legend(fontsize=8)
    for ax, key, title in ((axes[1], "clients_per_s", f"{plan.idle} clients: set-up rate, clients/s (higher is better)"),
                           (axes[2], "rss_per_client_kb", "server RSS per idle client, KB (lower is better)")):
        vals = [float((results[k].get("idle") or {}).get(key) or 0) for k in servers]
        ax.bar(servers, vals, color=["tab:blue", "tab:orange"][: len(servers)])
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"trivpn serve vs openvpn --server, commit {plan.extra.get('commit', '?')}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the benchmark needs root (network namespaces, TUN devices)"
    for tool in ("ip", "openvpn", "iperf3"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found on PATH (apt-get install openvpn iperf3 iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def parse_args(argv: list[str] | None) -> Plan:
    p = argparse.ArgumentParser(prog="python -m trivpn.bench server",
                                description="trivpn serve vs openvpn --server, same clients, same run (needs root).")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per iperf3 run (default 5)")
    p.add_argument("--clients", default="1,4", help="comma-separated client counts for iperf3 (default 1,4; max 8)")
    p.add_argument("--idle", type=int, default=1000, help="idle userspace clients held at once (default 1000; 0: skip)")
    p.add_argument("--pools", type=int, default=4, help="processes the idle clients come from (default 4)")
    p.add_argument("--servers", default="trivpn,openvpn", help="which servers, in order (default trivpn,openvpn)")
    p.add_argument("--quick", action="store_true", help="a short run: 1 s iperf3, 1 client, 20 idle clients")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for JSON and Markdown")
    a = p.parse_args(argv)
    try:
        clients = tuple(int(x) for x in a.clients.split(",") if x.strip())
    except ValueError:
        p.error("--clients takes comma-separated numbers, e.g. 1,4")
    servers = tuple(s.strip() for s in a.servers.split(",") if s.strip())
    if a.quick:
        a.seconds, clients, a.idle, a.pools = 1.0, (1,), 20, 1
    if not clients or any(not 1 <= c <= 8 for c in clients) or not 0.5 <= a.seconds <= 120:
        p.error("--clients must be 1..8 each, --seconds 0.5..120")
    if not 0 <= a.idle <= 5000 or not 1 <= a.pools <= 16:
        p.error("--idle must be 0..5000, --pools 1..16")
    if not servers or any(s not in SERVERS for s in servers):
        p.error(f"--servers takes a comma-separated subset of {','.join(SERVERS)}")
    return Plan(seconds=a.seconds, clients=clients, idle=a.idle, pools=a.pools, out=a.out, servers=servers)


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    missing = _missing_requirements()
    if missing:
        print(f"trivpn.bench server: error: {missing}", file=sys.stderr)
        return 1
    from trivpn.testing import generate_pki

    machine = describe_machine()
    print(machine_report(machine), flush=True)
    print(f"commit: {machine['commit']}", flush=True)
    print(f"plan: iperf3 {plan.seconds:g} s with {', '.join(map(str, plan.clients))} client(s); "
          f"{plan.idle} idle clients from {plan.pools} process(es); servers {', '.join(plan.servers)}", flush=True)
    pki = generate_pki()
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="trivpn-bench-server-") as tmp:
        for kind in plan.servers:
            workdir = Path(tmp) / kind
            workdir.mkdir()
            print(f"server {kind}:", flush=True)
            results[kind] = run_server(kind, plan, pki, workdir)
    table = f"Commit {machine['commit']}, {machine['date']}.\n\n" + format_table(results, plan)
    print()
    print(table)
    plan.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine, "plan": {"seconds": plan.seconds, "clients": list(plan.clients), "idle": plan.idle,
                                        "pools": plan.pools, "servers": list(plan.servers),
                                        "elapsed_s": round(time.monotonic() - started, 1)},
           "results": results}
    (plan.out / "bench-server.json").write_text(json.dumps(doc, indent=2) + "\n")
    (plan.out / "bench-server.md").write_text(table + "\n")
    plan.extra["commit"] = machine["commit"]
    drawn = draw_chart(results, plan, plan.out / "bench-server.png")
    print(f"\nwrote {plan.out / 'bench-server.json'}" + (" and bench-server.png" if drawn else
          " (no chart: pip install 'trivpn[bench]' for matplotlib)"))
    failed = [k for k, r in results.items() if not r.get("ok")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
