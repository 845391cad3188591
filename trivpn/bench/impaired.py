"""`python -m trivpn.bench impaired`: time to tunnel over a lossy link, trivpn vs OpenVPN.

Both clients connect to the same Debian openvpn server through the same seeded impairment
relay (`trivpn.testing.relay`, default 20 % loss, 10 % reordering, 5 % duplication in both
directions). For each seed each client gets a fresh relay with that seed, so both meet the
same fates datagram for datagram (how many datagrams each sends differs, of course). The
clients alternate which goes first from seed to seed.

Measured: seconds from starting the client process to the first echo reply through the
tunnel. trivpn: `python -m trivpn ping PROFILE 10.202.0.1 -i 0.2`, stopped at its first
reply line (with `-c 1` a single lost echo would turn a fine tunnel into a failed run).
OpenVPN: `openvpn --config PROFILE` in the client namespace, then `ping -c 1 -W 0.2` in a
loop until one answers. Both bounded by `--timeout`. A table of every run, then median,
min, max and standard deviation per client. No assertions: this is a measurement.

Needs root (network namespaces, TUN for OpenVPN's client).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from trivpn.records import dataclass

CLIENTS = ("trivpn", "openvpn")
TARGET = "10.202.0.1"
#: Seconds the relay process gets to print its "listening" line.
RELAY_START = 15.0
#: Seconds a client gets to exit after SIGTERM/SIGINT before SIGKILL.
STOP_GRACE = 5.0


@dataclass(slots=True)
class Run:
    client: str
    seed: int
    seconds: float | None  # None: no reply within the timeout
    relay: str = ""
    error: str = ""


def _missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the benchmark needs root (network namespaces, TUN devices)"
    for tool in ("ip", "openvpn", "ping"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found on PATH (apt-get install openvpn iproute2 iputils-ping)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> str:
    """Stop a child (bounded) and return whatever it still had to say on stdout."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=STOP_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out if isinstance(out, str) else ""


def _start_relay(ns: Any, upstream: str, seed: int, impairment: list[str]) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = ns.popen(
        [sys.executable, "-m", "trivpn.testing.relay", "--listen", "127.0.0.1:1194",
         "--upstream", f"{upstream}:1194", "--seed", str(seed), "--lifetime", "600", *impairment],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], RELAY_START)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("relay listening"):
        _stop(proc)
        raise RuntimeError(f"the relay did not start: {line.strip()!r}")
    return proc


def _time_trivpn(ns: Any, profile: Path, timeout: float, env: dict[str, str]) -> tuple[float | None, str]:
    start = time.monotonic()
    proc = ns.popen(
        [sys.executable, "-m", "trivpn", "ping", str(profile), TARGET, "-c", str(int(timeout / 0.2) + 10),
         "-i", "0.2", "--connect-timeout", str(timeout), "--no-reconnect"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    assert proc.stdout is not None
    deadline = start + timeout
    seen: list[str] = []
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line.rstrip())
            if " bytes from " in line:
                return time.monotonic() - start, ""
        return None, (seen[-1] if seen else "no output")
    finally:
        _stop(proc, signal.SIGINT)


def _time_openvpn(ns: Any, profile: Path, timeout: float, log: Path) -> tuple[float | None, str]:
    start = time.monotonic()
    proc = ns.popen(
        ["openvpn", "--config", str(profile), "--log", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    deadline = start + timeout
    try:
        while time.monotonic() < deadline:
            r = ns.run(["ping", "-n", "-c", "1", "-W", "0.2", TARGET], check=False, timeout=10)
            if r.returncode == 0:
                return time.monotonic() - start, ""
            if proc.poll() is not None:
                return None, f"openvpn exited with {proc.returncode}"
            if "unreachable" in (r.stdout + r.stderr).lower():
                time.sleep(0.05)  # no tunnel route yet: ping failed at once
        return None, "no reply within the timeout"
    finally:
        _stop(proc)


def _relay_summary(output: str) -> str:
    line = next((ln for ln in output.splitlines() if ln.startswith("relay counters:")), "")
    parts = []
    for chunk in line.removeprefix("relay counters:").split(";"):
        words = chunk.replace(",", "").split()
        if not words:
            continue
        fields = dict(zip(words[1::2], words[2::2], strict=False))
        parts.append(f"{words[0]} {fields.get('dropped', '?')}/{fields.get('received', '?')} dropped")
    return ", ".join(parts)


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None, "stdev": None}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_table(runs: list[Run], clients: tuple[str, ...], seeds: list[int]) -> str:
    lines = [f"{'seed':>6s} " + " ".join(f"{c + ' (s)':>14s}" for c in clients) + "   relay (per run)"]
    for seed in seeds:
        row = [f"{seed:6d}"]
        relays = []
        for c in clients:
            r = next(r for r in runs if r.seed == seed and r.client == c)
            row.append(f"{_fmt(r.seconds):>14s}" if not r.error else f"{'failed':>14s}")
            relays.append(f"{c}: {r.relay}")
        lines.append(" ".join(row) + "   " + "; ".join(relays))
    lines.append("")
    lines.append(f"{'client':8s} {'ok':>5s} {'median':>8s} {'min':>8s} {'max':>8s} {'stdev':>8s}")
    for c in clients:
        ok = [r.seconds for r in runs if r.client == c and r.seconds is not None]
        s = _stats(ok)
        n = sum(1 for r in runs if r.client == c)
        lines.append(f"{c:8s} {len(ok):>2d}/{n:<2d} {_fmt(s['median']):>8s} {_fmt(s['min']):>8s} "
                     f"{_fmt(s['max']):>8s} {_fmt(s['stdev']):>8s}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m trivpn.bench impaired",
        description="Time from process start to the first ping reply through an impaired link, "
        "trivpn vs OpenVPN's own client (needs root).",
    )
    p.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated relay seeds (default 1,2,3,4,5)")
    p.add_argument("--drop", type=float, default=0.2, help="loss probability per direction (default 0.2)")
    p.add_argument("--reorder", type=float, default=0.1, help="reordering probability (default 0.1)")
    p.add_argument("--duplicate", type=float, default=0.05, help="duplication probability (default 0.05)")
    p.add_argument("--relay-args", default="", help="more relay options, e.g. '--down garbage=0.1'")
    p.add_argument("--clients", default="trivpn,openvpn", help="comma-separated: trivpn,openvpn")
    p.add_argument("--timeout", type=float, default=90.0, help="give up on one run after this (s)")
    p.add_argument("--json", type=Path, default=None, help="also write every run to this file")
    a = p.parse_args(argv)
    try:
        a.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        p.error("--seeds takes comma-separated integers")
    a.clients = tuple(c.strip() for c in a.clients.split(",") if c.strip())
    if not a.seeds or not a.clients or any(c not in CLIENTS for c in a.clients):
        p.error(f"need at least one seed and clients from {','.join(CLIENTS)}")
    if not 5 <= a.timeout <= 600:
        p.error("--timeout must be 5..600 s")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = _missing_requirements()
    if missing:
        print(f"trivpn.bench impaired: error: {missing}", file=sys.stderr)
        return 1
    from trivpn.testing import (
        OpenVPNServer,
        ServerOptions,
        client_profile,
        generate_pki,
        netns_pair,
    )

    impairment = ["--drop", str(args.drop), "--reorder", str(args.reorder),
                  "--duplicate", str(args.duplicate), *args.relay_args.split()]
    print(f"impairment: {' '.join(impairment)}; seeds {args.seeds}; clients {', '.join(args.clients)}",
          flush=True)
    pki = generate_pki()
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM")
    runs: list[Run] = []
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="trivpn-bench-impaired-") as tmp, netns_pair(prefix="tvi") as pair:
        work = Path(tmp)
        # Compiled bytecode as an installed copy has it, outside the work tree.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        subprocess.run([sys.executable, "-c", "import trivpn.cli, trivpn.client"], env=env, check=False)
        server = OpenVPNServer(pair.server, pki, opts, work / "server", listen_v4=pair.server_v4)
        server.start()
        try:
            profile = work / "client.ovpn"
            profile.write_text(client_profile(pki, opts, "127.0.0.1"))
            for i, seed in enumerate(args.seeds):
                order = args.clients if i % 2 == 0 else tuple(reversed(args.clients))
                for client in order:
                    relay = _start_relay(pair.client, pair.server_v4, seed, impairment)
                    try:
                        if client == "trivpn":
                            secs, err = _time_trivpn(pair.client, profile, args.timeout, env)
                        else:
                            secs, err = _time_openvpn(pair.client, profile, args.timeout,
                                                      work / f"openvpn-{seed}.log")
                    finally:
                        relay_out = _stop(relay)
                    run = Run(client, seed, secs, _relay_summary(relay_out), err)
                    runs.append(run)
                    shown = f"{secs:.2f} s" if secs is not None else f"failed ({err})"
                    print(f"  seed {seed:3d} {client:8s} {shown}   [{run.relay}]", flush=True)
                    time.sleep(0.5)  # let the server notice the client left
        finally:
            server.stop()
    print()
    print(format_table(runs, args.clients, args.seeds))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
