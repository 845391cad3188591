"""`python -m trivpn.bench rtt`: the idle ping RTT of two clients, measured at the same moments.

Why: `bench vpn` measures each client's idle RTT in its own slot of about 20 s, one client
after the other, and this machine's speed drifts by 2–3× between such slots
(docs/performance.md): whole rounds of one client land at 0.3 ms and the next at 0.5 ms.
A ratio of two medians taken minutes apart mostly measures that drift. Here both clients
are connected at once to the same server, each from its own network namespace, and their
pings interleave: each namespace runs `ping -i 0.02`, the second started 10 ms after the
first, so every echo of one client has one of the other's 10 ms before and after it, and
whatever the machine does in between hits both. Rounds restart both clients and swap which
one starts first and which namespace it runs in.

Each tunnel still sees one echo every 20 ms and is idle in between: the figure is the
idle round trip `bench vpn` reports (it pings every 10 ms), not a loaded one.

Traffic only flows inside the namespaces made here; every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from trivpn.bench import probe, vpn
from trivpn.bench.machine import describe_machine, machine_report

#: Seconds between one client's echoes; the other client's sit halfway between them.
INTERVAL = 0.02
#: Bound on a child's start-up (both tunnels up) and on its pings beyond their schedule.
READY_TIMEOUT = probe.START_TIMEOUT + 10
PING_SLACK = 30.0
#: The second client's link to the server's namespace (the first uses the pair's veth).
SECOND_LINK = ("10.201.1.1", "10.201.1.2")


# ---------------------------------------------------------------------------------------
# child: runs in a client's namespace


def child() -> int:
    """Start the client, report when its tunnel answers, ping at the time the parent says,
    report the RTTs, stop the client. One JSON line per stage on stdout."""
    spec = json.loads(sys.stdin.readline())
    env = dict(os.environ)
    for name, value in spec.get("env", {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    t0 = time.monotonic()
    proc = subprocess.Popen(spec["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    out = probe._Output(proc)
    result: dict[str, Any] = {"ok": False}
    try:
        t_ping = probe.wait_first_reply(spec["target"], t0 + probe.START_TIMEOUT,
                                        lambda: proc.poll() is None)
        if t_ping is None:
            raise RuntimeError("no ping reply through the tunnel")
        _say({"ready": round(t_ping - t0, 4)})
        line = sys.stdin.readline().split()
        if len(line) != 2 or line[0] != "go":
            raise RuntimeError("the parent gave no start time")
        time.sleep(max(0.0, float(line[1]) - time.monotonic()))
        cpu0, w0 = probe._cpu_seconds(proc.pid), time.monotonic()
        result["rtt_ms"] = probe.ping_rtts(spec["target"], spec["pings"], INTERVAL)
        result["idle_cpu_pct"] = round(
            100 * (probe._cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - w0), 2)
        result["ok"] = bool(result["rtt_ms"])
        if not result["ok"]:
            result["error"] = "no echo was answered"
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if proc.poll() is None:
            proc.send_signal(spec["stop_signal"])
            try:
                proc.wait(timeout=probe.STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.join()
        if not result["ok"]:
            result["tail"] = out.tail(10)
    _say(result)
    return 0


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------
# parent


class _Child:
    """One child process in a namespace, its stdout lines read by a thread (bounded waits)."""

    def __init__(self, ns: Any, spec: dict[str, Any]) -> None:
        self.proc = ns.popen([sys.executable, "-m", "trivpn.bench.pairrtt", "--child"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(json.dumps(spec))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self.lines.put(json.loads(raw))
            except ValueError:
                continue

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the child ended; its last line (or the timeout) says why

    def next(self, timeout: float) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return {"ok": False, "error": f"no answer within {timeout:g} s"}

    def close(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=probe.STOP_TIMEOUT + 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_pair(slots: list[tuple[Any, dict[str, Any]]], pings: int) -> list[dict[str, Any]]:
    """Start one child per (namespace, spec); once every tunnel answers, start their pings
    INTERVAL / len(slots) apart. One result per slot, in order."""
    children = [_Child(ns, spec) for ns, spec in slots]
    try:
        ready = [c.next(READY_TIMEOUT) for c in children]
        if not all("ready" in r for r in ready):
            for c, r in zip(children, ready, strict=True):
                if "ready" in r:
                    c.send("stop")
            return [r if "ready" not in r else {"ok": False, "error": "the other client failed"}
                    for r in ready]
        start = time.monotonic() + 0.2
        for i, c in enumerate(children):
            c.send(f"go {start + i * INTERVAL / len(children):.6f}")
        wait = 0.2 + pings * INTERVAL + PING_SLACK
        results = [c.next(wait) for c in children]
        for r, rd in zip(results, ready, strict=True):
            r["start_to_ping_s"] = rd["ready"]
        return results
    finally:
        for c in children:
            c.close()


def summarize(runs: list[dict[str, Any]], clients: tuple[str, str]) -> dict[str, Any]:
    """Over the rounds where both clients measured (a round is a pair): per client p50/p90/p99
    of all its echoes and its p50 per round; the first client's p50 over the second's,
    overall and per round."""
    ok = {(r["round"], r["client"]): r for r in runs if r.get("ok")}
    rounds = sorted({rnd for rnd, _c in ok if all((rnd, c) in ok for c in clients)})
    out: dict[str, Any] = {"rounds_paired": len(rounds)}
    for client in clients:
        mine = [ok[rnd, client] for rnd in rounds]
        rtts = [x for r in mine for x in r["rtt_ms"]]
        out[client] = {
            "echoes": len(rtts),
            "p50_ms": vpn.percentile(rtts, 50),
            "p90_ms": vpn.percentile(rtts, 90),
            "p99_ms": vpn.percentile(rtts, 99),
            "round_p50_ms": [vpn.percentile(r["rtt_ms"], 50) for r in mine],
            "idle_cpu_pct": statistics.median([r["idle_cpu_pct"] for r in mine]) if mine else None,
        }
    a, b = (out[c]["p50_ms"] for c in clients)
    out["ratio_p50"] = round(a / b, 3) if a and b else None
    out["round_ratios_p50"] = [
        round(pa / pb, 3) if pa and pb else None
        for pa, pb in zip(out[clients[0]]["round_p50_ms"], out[clients[1]]["round_p50_ms"], strict=True)
    ]
    return out


def run_cell(cell: vpn.Cell, plan: vpn.Plan, pki: Any, workdir: Path) -> list[dict[str, Any]]:
    from trivpn.testing import OpenVPNServer, client_profile, netns_pair
    from trivpn.testing.netns import second_client
    from trivpn.testing.pki import with_client

    opts = vpn.server_options(cell, nagle=plan.server_nagle)
    runs: list[dict[str, Any]] = []
    with netns_pair(prefix="tvr") as pair, second_client(pair, *SECOND_LINK) as other:
        # the server listens on its first link's address only: route the second to it
        other.run(["ip", "route", "add", f"{pair.server_v4}/32", "via", SECOND_LINK[0]])
        server = OpenVPNServer(pair.server, pki, opts, workdir / cell.slug, listen_v4=pair.server_v4)
        server.start()
        try:
            profiles = []
            for i, p in enumerate((pki, with_client(pki, "trivpn-bench-second"))):
                path = workdir / cell.slug / f"client{i}.ovpn"
                path.write_text(client_profile(p, opts, server.remote_host))
                profiles.append(path)
            namespaces = (pair.client, other)
            for rnd in range(plan.rounds):
                # even rounds: first client first, in the first namespace; odd: swapped
                order = plan.clients if rnd % 2 == 0 else plan.clients[::-1]
                slots = [(namespaces[i], vpn._client_spec(c, cell, profiles[i], server.tunnel_v4, plan))
                         for i, c in enumerate(order)]
                print(f"  [{cell.name} round {rnd + 1}/{plan.rounds}] {order[0]} and {order[1]}: "
                      f"{plan.pings} echoes each, {INTERVAL * 1000 / 2:g} ms apart ...", flush=True)
                for res, (_ns, spec) in zip(run_pair(slots, plan.pings), slots, strict=True):
                    res.update(client=spec["client"], round=rnd, cell=cell.name)
                    runs.append(res)
                    if res.get("ok"):
                        print(f"    {spec['client']:14s} p50 {vpn.percentile(res['rtt_ms'], 50):.3f} ms "
                              f"({len(res['rtt_ms'])} echoes, idle CPU {res['idle_cpu_pct']:.2f} %)")
                    else:
                        print(f"    {spec['client']:14s} FAILED: {res.get('error')}")
        finally:
            server.stop()
    return runs


def format_table(results: dict[str, Any], clients: tuple[str, str]) -> str:
    a, b = clients
    lines = [f"| cell | {a} p50 / p99 (ms) | {b} p50 / p99 (ms) | ratio p50 | per-round ratios |",
             "|---|---|---|---|---|"]
    for cell, r in results.items():
        ratio = r["ratio_p50"]
        lines.append(
            f"| {cell} | {vpn._fmt(r[a]['p50_ms'])} / {vpn._fmt(r[a]['p99_ms'])} "
            f"| {vpn._fmt(r[b]['p50_ms'])} / {vpn._fmt(r[b]['p99_ms'])} "
            f"| {'—' if ratio is None else f'{ratio:.2f}×'} "
            f"| {', '.join('—' if x is None else f'{x:.2f}' for x in r['round_ratios_p50'])} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[vpn.Plan, Path | None]:
    p = argparse.ArgumentParser(
        prog="python -m trivpn.bench rtt",
        description="idle ping RTT of two clients connected at once, pings interleaved (needs root)",
    )
    p.add_argument("--rounds", type=int, default=6, help="rounds per cell, both clients restarted (6)")
    p.add_argument("--pings", type=int, default=200, help="echoes per client per round (200)")
    p.add_argument("--cells", default="udp-aes-256-gcm,tcp-aes-256-gcm",
                   help="comma-separated cells as in `bench vpn` (default the two AES cells)")
    p.add_argument("--clients", default="trivpn,openvpn",
                   help="exactly two of " + ",".join(vpn.CLIENTS) + "; the ratio is first/second")
    p.add_argument("--json", type=Path, default=None, help="write the runs and summary here")
    p.add_argument("--quick", action="store_true", help="one round of 30 echoes (smoke run)")
    p.add_argument("--base", type=Path, default=None,
                   help="also offer client trivpn-base: trivpn imported from this source tree")
    p.add_argument("--variant", action="append", default=[],
                   help="also offer client NAME: this tree's trivpn with VAR=VALUE (NAME:VAR=VALUE)")
    # the server's Nagle put a fifth of the TCP echoes at ≈ 24 ms for both clients
    vpn.add_server_tcp_option(p, "nodelay")
    a = p.parse_args(argv)
    variants: dict[str, tuple[str, str]] = {}
    for v in a.variant:
        name, _, assignment = v.partition(":")
        var, eq, value = assignment.partition("=")
        if not name.startswith("trivpn-") or not var or not eq or name in vpn.CLIENTS:
            p.error(f"--variant {v!r}: expected trivpn-NAME:VAR=VALUE with a new NAME")
        variants[name] = (var, value)
    if a.base is not None and not (a.base / "trivpn" / "__init__.py").is_file():
        p.error(f"--base {a.base}: holds no trivpn package")
    if a.base is not None or variants:
        from trivpn.bench import ab

        ab.install(a.base.resolve() if a.base is not None else None, variants)
    cells = [vpn.Cell(t, c) for t in vpn.TRANSPORTS for c in vpn.CIPHERS]
    wanted = [s.strip().lower() for s in a.cells.split(",") if s.strip()]
    unknown = set(wanted) - {c.slug for c in cells}
    if unknown or not wanted:
        p.error(f"unknown cell(s) {', '.join(sorted(unknown)) or '(none given)'}; "
                f"known: {', '.join(c.slug for c in cells)}")
    clients = tuple(c.strip() for c in a.clients.split(",") if c.strip())
    if len(clients) != 2 or len(set(clients)) != 2 or any(c not in vpn.CLIENTS for c in clients):
        p.error(f"--clients takes two different names of {','.join(vpn.CLIENTS)}")
    rounds, pings = (1, 30) if a.quick else (a.rounds, a.pings)
    if not 1 <= rounds <= 50:
        p.error("--rounds must be 1..50")
    if not 10 <= pings <= 5000:
        p.error("--pings must be 10..5000")
    plan = vpn.Plan(rounds=rounds, seconds=1.0, omit=0, pings=pings,
                    cells=[c for c in cells if c.slug in wanted], clients=clients, out=Path("."),
                    server_nagle=a.server_tcp == "shipped")
    return plan, a.json


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--child"]:
        return child()
    plan, json_path = parse_args(args)
    missing = vpn._missing_requirements()
    if missing:
        print(f"trivpn.bench rtt: error: {missing}", file=sys.stderr)
        return 1
    from trivpn.testing import generate_pki

    machine = describe_machine()
    print(machine_report(machine), flush=True)
    pki = generate_pki()
    clients = (plan.clients[0], plan.clients[1])
    started = time.monotonic()
    results: dict[str, Any] = {}
    all_runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trivpn-bench-rtt-") as tmp:
        plan.pycache = Path(tmp) / "pycache"
        vpn._warm_bytecode(plan)
        for cell in plan.cells:
            print(f"cell {cell.name}", flush=True)
            runs = run_cell(cell, plan, pki, Path(tmp))
            all_runs.extend(runs)
            results[cell.name] = summarize(runs, clients)
    table = format_table(results, clients)
    print()
    print(table)
    if json_path is not None:
        doc = {"machine": machine,
               "plan": {"rounds": plan.rounds, "pings": plan.pings, "interval_s": INTERVAL,
                        "cells": [c.name for c in plan.cells], "clients": list(clients),
                        "server_tcp_lines": plan.server_tcp_lines,
                        "elapsed_s": round(time.monotonic() - started, 1)},
               "results": results, "runs": all_runs}
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {json_path}")
    failed = [r for r in all_runs if not r.get("ok")]
    if failed:
        print(f"{len(failed)} run(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
