"""One-off (issue 16): where an idle ping's round trip goes, hop by hop, traced by the kernel.

Two namespaces and Debian's openvpn server as in `bench vpn` (UDP, tls-crypt, AES-256-GCM).
For each client (alternating, `--rounds` times) it starts the client, waits for the tunnel
and `--delay` seconds, then records the scheduler's tracepoints (`sched_wakeup`,
`sched_switch`; with `--syscalls` also every system call's entry and exit) with
`perf record -a` while `ping -i 0.01 -c 200` runs through the tunnel. From the trace:

* `run_us`: how long each party (the client's threads, the server, ping) ran per
  switch-in (p50/p90). The server and ping do the same work whichever client runs, so
  their figures show how fast the machine itself was during that run.
* `wake_us`: from a wake-up to the woken thread running, per waker → woken pair.
* `hops_us` (with `--syscalls`): per round trip, ping's send → the client's TUN read →
  its UDP send → the server's UDP send → the client's UDP receive → its TUN write →
  ping's receive (p50/p90 of each step).

The tracing adds work to every hop, so absolute figures are higher than untraced ones
and only same-run comparisons count. Needs root, `perf`, tracefs (mounted here if it is
not) and the trivpn checkout as the working directory.

A client named `trivpn@TREE` runs the trivpn of checkout TREE (old against new, same run).

Usage: python3 docs/bench/scripts/issue16_idle_sched_trace.py [--clients trivpn,openvpn]
           [--rounds 3] [--delay 1] [--syscalls] [--json OUT]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())

from trivpn.testing import (  # noqa: E402
    OpenVPNServer,
    ServerOptions,
    client_profile,
    generate_pki,
    netns_pair,
)

LINE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$")
SWITCH = re.compile(r"prev_comm=(.*?) prev_pid=(\d+) .*next_comm=(.*?) next_pid=(\d+)")
WAKE = re.compile(r"pid=(\d+) .*target_cpu=(\d+)")
SYSCALL = re.compile(r"NR (\d+)(?: = (-?\d+))?")
# x86-64 system call numbers
READ, WRITE, WRITEV, SENDTO, RECVFROM, SENDMSG, RECVMSG = 0, 1, 20, 44, 45, 46, 47


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"n": len(values), "p50": statistics.median(values), "p90": _pct(values, 0.9)}


def _events(text: str, server_pid: int, client_pid: int) -> list[tuple[float, str, int, int, str, str]]:
    """(time µs, role, tid, cpu, event, rest) for every traced line of interest."""
    out = []
    for line in text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        comm, pid, tid, cpu, t, name, rest = m.groups()
        if comm == "perf":
            continue
        if comm == "ping":
            role = "ping"
        elif int(pid) == server_pid:
            role = "server"
        elif int(pid) == client_pid:
            role = "client"
        else:
            role = "other"
        out.append((float(t) * 1e6, role, int(tid), int(cpu), name, rest))
    return out


def analyse(text: str, server_pid: int, client_pid: int) -> dict[str, Any]:
    ev = _events(text, server_pid, client_pid)
    role_of = {tid: role for _t, role, tid, _c, _n, _r in ev if role != "other"}
    runs: dict[str, list[float]] = collections.defaultdict(list)
    wakes: dict[str, list[float]] = collections.defaultdict(list)
    on_cpu: dict[int, tuple[float, str]] = {}
    pending: dict[int, tuple[float, str]] = {}
    for t, role, _tid, cpu, name, rest in ev:
        if name == "sched:sched_wakeup":
            m = WAKE.search(rest)
            if m and int(m.group(1)) in role_of:
                pending[int(m.group(1))] = (t, role)
        elif name == "sched:sched_switch":
            m = SWITCH.search(rest)
            if not m:
                continue
            if cpu in on_cpu:
                t0, who = on_cpu.pop(cpu)
                runs[who].append(t - t0)
            nxt = int(m.group(4))
            if nxt in role_of:
                label = role_of[nxt] if role_of[nxt] != "client" else f"client:{m.group(3)}"
                on_cpu[cpu] = (t, label)
            if nxt in pending:
                tw, waker = pending.pop(nxt)
                wakes[f"{waker}->{role_of[nxt]}"].append(t - tw)
    result: dict[str, Any] = {
        "run_us": {k: _stats(v) for k, v in sorted(runs.items()) if len(v) >= 20},
        "wake_us": {k: _stats(v) for k, v in sorted(wakes.items()) if len(v) >= 20},
    }
    hops = _hops(ev)
    if hops:
        names = ["ping send -> client TUN read", "client TUN read -> UDP send",
                 "client UDP send -> server UDP send", "server UDP send -> client UDP receive",
                 "client UDP receive -> TUN write", "client TUN write -> ping receive", "total"]
        result["hops_us"] = {n: _stats([h[i] for h in hops]) for i, n in enumerate(names)}
    return result


def _hops(ev: list[tuple[float, str, int, int, str, str]]) -> list[list[float]]:
    """Per round trip, the steps between the marker system calls (needs --syscalls)."""
    calls = []
    for t, role, _tid, _cpu, name, rest in ev:
        if name.startswith("raw_syscalls:"):
            m = SYSCALL.match(rest)
            if m:
                ret = int(m.group(2)) if m.group(2) is not None else None
                calls.append((t, role, name.endswith("sys_enter"), int(m.group(1)), ret))
    steps = [
        lambda c: c[1] == "client" and not c[2] and c[3] == READ and (c[4] or 0) > 0,
        lambda c: c[1] == "client" and c[2] and c[3] in (SENDTO, SENDMSG),
        lambda c: c[1] == "server" and c[2] and c[3] == SENDTO,
        lambda c: c[1] == "client" and not c[2] and c[3] in (RECVFROM, RECVMSG) and (c[4] or 0) > 0,
        lambda c: c[1] == "client" and c[2] and c[3] in (WRITE, WRITEV),
        lambda c: c[1] == "ping" and not c[2] and c[3] == RECVMSG and (c[4] or 0) > 0,
    ]
    starts = [i for i, c in enumerate(calls) if c[1] == "ping" and c[2] and c[3] == SENDTO]
    out = []
    for k, i in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(calls)
        times, j = [calls[i][0]], i
        for step in steps:
            while j < end and not step(calls[j]):
                j += 1
            if j == end:
                break
            times.append(calls[j][0])
        if len(times) == len(steps) + 1:
            out.append([b - a for a, b in zip(times, times[1:], strict=False)] + [times[-1] - times[0]])
    return out


def one_run(pair: Any, server: OpenVPNServer, profile: Path, client: str, args: argparse.Namespace,
            work: Path) -> dict[str, Any]:
    env = None
    if client.startswith("trivpn"):
        argv = [sys.executable, "-m", "trivpn", "connect", str(profile)]
        stop = signal.SIGINT
        if "@" in client:  # trivpn@TREE: the trivpn of another checkout (same-run A/B)
            env = dict(os.environ, PYTHONPATH=client.split("@", 1)[1], PYTHONSAFEPATH="1")
    else:
        argv = ["openvpn", "--config", str(profile)]
        stop = signal.SIGTERM
    proc = pair.client.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(400):
            if pair.client.run(["ping", "-c1", "-W1", server.tunnel_v4], check=False).returncode == 0:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"{client}: no tunnel")
        time.sleep(args.delay)
        events = "sched:sched_wakeup,sched:sched_switch"
        if args.syscalls:
            events += ",raw_syscalls:sys_enter,raw_syscalls:sys_exit"
        data = work / "perf.data"
        rec = subprocess.Popen(["perf", "record", "-q", "-a", "-o", str(data), "-e", events,
                                "--", "sleep", "3.2"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        out = pair.client.run(["ping", "-c", "200", "-i", "0.01", server.tunnel_v4],
                              check=False).stdout
        rec.wait(timeout=30)
        text = subprocess.run(["perf", "script", "-i", str(data), "-F",
                               "comm,pid,tid,cpu,time,event,trace"],
                              capture_output=True, text=True, timeout=300).stdout
    finally:
        proc.send_signal(stop)
        proc.wait(timeout=10)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    assert server.pid is not None
    return {"client": client, "ping_ms": _stats(rtts), **analyse(text, server.pid, proc.pid)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--clients", default="trivpn,openvpn")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--delay", type=float, default=1.0)
    p.add_argument("--syscalls", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if not os.path.isdir("/sys/kernel/tracing/events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=True)
    clients = args.clients.split(",")
    pki = generate_pki()
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM")
    runs = []
    with tempfile.TemporaryDirectory() as tmp, netns_pair(prefix="tvi") as pair:
        work = Path(tmp)
        server = OpenVPNServer(pair.server, pki, opts, work / "server", listen_v4=pair.server_v4)
        server.start()
        try:
            profile = work / "client.ovpn"
            profile.write_text(client_profile(pki, opts, server.remote_host))
            for r in range(args.rounds):
                for client in clients if r % 2 == 0 else clients[::-1]:
                    res = one_run(pair, server, profile, client, args, work) | {"round": r}
                    runs.append(res)
                    run_us = res["run_us"]
                    srv = run_us.get("server") or {}
                    print(f"round {r} {client:8s} ping p50 {res['ping_ms']['p50']:.3f} ms; "
                          f"server runs p50 {srv.get('p50', 0):.0f} us; "
                          + ", ".join(f"{k} {v['p50']:.0f}" for k, v in run_us.items()
                                      if k.startswith("client")), flush=True)
        finally:
            server.stop()
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    report = {"commit": head, "delay_s": args.delay, "syscalls": args.syscalls, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
