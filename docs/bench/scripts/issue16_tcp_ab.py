"""One-off A/B harness for the TCP data path (issue 16), kept so its figures can be re-taken.

Why not `trivpn.bench vpn`: that runs a full probe (pings, both directions, RSS) per client
and cannot compare two source trees. This script creates the same namespaces and Debian
openvpn server (TCP, tls-crypt, one cipher), then alternates *variants* of the trivpn client
— each a source tree (PYTHONPATH) plus `connect` flags — for a few rounds, measuring iperf3
through the tunnel in the chosen directions and the client's CPU seconds per GB. With
`--pyspy NAME` the runs of variant NAME are sampled by py-spy (`pip install py-spy`,
not a dependency) into `--out`.

    sudo python3 docs/bench/scripts/issue16_tcp_ab.py --variant old=/work/main: \
        --variant new=$PWD: --cipher AES-256-GCM --rounds 3 --seconds 5 --out /tmp/ab

A variant is NAME=TREE:FLAGS (FLAGS comma-separated, e.g. `trio=$PWD:--no-data-threads`);
TREE `openvpn` runs OpenVPN's client with TCP_NODELAY instead.
Traffic stays inside the namespaces created here; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK")
UP_TIMEOUT = 30.0


def _cpu(pid: int) -> float:
    return sum(_user_sys(pid))


def _user_sys(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def _proc_cpu(pids: list[int]) -> dict[str, float]:
    """CPU seconds per command name of `pids` (both namespaces' processes)."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        out[name] = out.get(name, 0.0) + _cpu(pid)
    return out


def _machine_busy() -> tuple[float, float, float]:
    """(busy, softirq, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return (sum(f) - idle) / _CLK_TCK, f[6] / _CLK_TCK, sum(f) / _CLK_TCK


def _iperf(ns: Any, target: str, seconds: float, reverse: bool) -> tuple[float, int]:
    argv = ["iperf3", "-c", target, "-t", f"{seconds:g}", "-O", "1", "-J"] + (["-R"] if reverse else [])
    for _attempt in range(3):
        r = ns.run(argv, check=False)
        try:
            data = json.loads(r.stdout)
        except ValueError:
            time.sleep(1)
            continue
        if "error" in data:
            time.sleep(1)
            continue
        s = data["end"]["sum_received"]
        return s["bits_per_second"] / 1e6, int(s["bytes"])
    raise RuntimeError(f"iperf3 failed: {r.stderr[-300:]}")


def _run_variant(ns: Any, name: str, tree: str, flags: list[str], profile: Path, target: str,
                 args: argparse.Namespace, tag: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=tree) if tree else dict(os.environ)
    argv = [sys.executable, "-m", "trivpn", "connect", str(profile), *flags]
    up_line = "tunnel up"
    if tree == "openvpn":  # OpenVPN's own client, as the benchmark runs it on TCP
        argv = ["openvpn", "--config", str(profile), "--socket-flags", "TCP_NODELAY", *flags]
        up_line = "Initialization Sequence Completed"
    log = args.out / f"{tag}.log"
    with open(log, "w") as logf:
        proc = ns.popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env)
    res: dict[str, Any] = {"variant": name, "ok": False}
    spy = None
    try:
        deadline = time.monotonic() + UP_TIMEOUT
        while up_line not in log.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                res["error"] = "no tunnel: " + log.read_text()[-300:]
                return res
            time.sleep(0.05)
        time.sleep(0.3)
        if args.pings:
            r = ns.run(["ping", "-c", str(args.pings), "-i", "0.01", "-W", "2", target], check=False)
            rtts = sorted(float(t) for t in re.findall(r"time=([0-9.]+) ms", r.stdout))
            res["idle_rtt_p50_ms"] = rtts[len(rtts) // 2] if rtts else None
        for direction in args.directions:
            reverse = direction == "down"
            if args.pyspy == name:
                spy = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(proc.pid), "--threads", "-r", "997",
                     "-d", f"{args.seconds + 1:g}", "-f", "raw", "-o",
                     str(args.out / f"{tag}-{direction}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            if args.perf == name:
                spy = subprocess.Popen(
                    ["perf", "record", "-g", "-p", str(proc.pid), "-o",
                     str(args.out / f"{tag}-{direction}.perf"), "--", "sleep", f"{args.seconds:g}"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            us0 = _user_sys(proc.pid)
            c0 = _cpu(proc.pid)
            pids = ns.pids() + args.server_ns.pids()
            p0, m0 = _proc_cpu(pids), _machine_busy()
            mbps, moved = _iperf(ns, target, args.seconds, reverse)
            c1 = _cpu(proc.pid)
            us1 = _user_sys(proc.pid)
            res[f"{direction}_user_sys_s"] = [round(us1[0] - us0[0], 2), round(us1[1] - us0[1], 2)]
            p1, m1 = _proc_cpu(pids), _machine_busy()
            wall = m1[2] - m0[2]
            res[f"{direction}_cpu_share"] = {  # % of the machine's 2 cores over the run
                k: round(100 * (p1[k] - p0.get(k, 0.0)) / wall * os.cpu_count(), 1) for k in p1
            } | {"machine busy": round(100 * (m1[0] - m0[0]) / wall * os.cpu_count(), 1),
                 "softirq": round(100 * (m1[1] - m0[1]) / wall * os.cpu_count(), 1)}
            if spy is not None:
                spy.wait(timeout=30)
                spy = None
            res[f"{direction}_mbps"] = round(mbps, 1)
            # iperf3 counts `seconds` of payload after the omitted one; CPU covers both
            res[f"{direction}_cpu_s_per_gb"] = round((c1 - c0) / (moved * (args.seconds + 1) / args.seconds / 1e9), 2)
        res["ok"] = True
        return res
    finally:
        if spy is not None:
            spy.kill()
        proc.send_signal(2 if tree != "openvpn" else 15)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    from trivpn.testing import (
        OpenVPNServer,
        ServerOptions,
        client_profile,
        generate_pki,
        netns_pair,
    )

    p = argparse.ArgumentParser()
    p.add_argument("--variant", action="append", required=True, help="NAME=TREE:FLAGS")
    p.add_argument("--cipher", default="AES-256-GCM")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--directions", default="down,up")
    p.add_argument("--pings", type=int, default=100, help="idle pings before iperf3 (p50 reported)")
    p.add_argument("--pyspy", default="")
    p.add_argument("--perf", default="", help="record `perf record -g` of this variant")
    p.add_argument("--out", type=Path, default=Path("/tmp/tcp-ab"))
    args = p.parse_args()
    args.directions = args.directions.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    variants = []
    for v in args.variant:
        name, rest = v.split("=", 1)
        tree, _, flags = rest.partition(":")
        variants.append((name, tree, [f for f in flags.split(",") if f]))
    pki = generate_pki()
    opts = ServerOptions(proto="tcp", wrap="tls-crypt", data_ciphers=args.cipher)
    runs: list[dict[str, Any]] = []
    with netns_pair(prefix="tab") as pair:
        server = OpenVPNServer(pair.server, pki, opts, args.out / "server", listen_v4=pair.server_v4)
        server.start()
        iperf = pair.server.popen(["iperf3", "-s"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            profile = args.out / "client.ovpn"
            profile.write_text(client_profile(pki, opts, server.remote_host))
            args.server_ns = pair.server
            for rnd in range(args.rounds):
                order = variants if rnd % 2 == 0 else list(reversed(variants))
                for name, tree, flags in order:
                    r = _run_variant(pair.client, name, tree, flags, profile, server.tunnel_v4,
                                     args, f"{name}-{rnd}")
                    r["round"] = rnd
                    runs.append(r)
                    print(json.dumps(r), flush=True)
        finally:
            iperf.terminate()
            iperf.wait(timeout=5)
            server.stop()
    summary: dict[str, dict[str, float]] = {}
    for name, _tree, _flags in variants:
        ok = [r for r in runs if r["variant"] == name and r["ok"]]
        summary[name] = {
            k: statistics.median(r[k] for r in ok)
            for k in (ok[0].keys() if ok else ()) if k.endswith(("_mbps", "_per_gb", "_ms")) and all(r.get(k) is not None for r in ok)
        }
    print(json.dumps({"cipher": args.cipher, "medians": summary}, indent=1))
    (args.out / "ab.json").write_text(json.dumps({"cipher": args.cipher, "variants": args.variant,
                                                  "runs": runs, "medians": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
