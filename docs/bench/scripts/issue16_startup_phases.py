"""One-off (issue 16): where `trivpn connect`'s start goes after the imports, phase by phase,
for two trees alternately — and how much of it compiles record `__init__`s.

Why: `bench startup` times the imports and the whole start → first ping, but its start →
ping moves by ±20 ms between rounds on this machine, more than a change of a few
milliseconds after the imports is worth. This runs the steps of `trivpn connect` (as the
bench's `ping` child does: TUN = one end of a socket pair, no root) against
`trivpn.testing`'s loopback server (UDP, tls-crypt, AES-256-GCM), with a timestamp after
each step, and counts the calls of `trivpn.records._compile_init` and the time they took.
Each round runs a fresh child of each tree, alternately; medians and per-round paired
differences (this − base) are printed and written.

Usage (no root), from the project root:
    python3 docs/bench/scripts/issue16_startup_phases.py BASE_TREE ROUNDS OUT.json
"""
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

CHILD = r'''
import sys, time
marks = []
def mark(n): marks.append((n, time.monotonic()))
import trivpn.records as _rec
_orig, _ct = _rec._compile_init, [0.0, 0]
def _timed(*a):
    t = time.perf_counter(); r = _orig(*a); _ct[0] += time.perf_counter() - t; _ct[1] += 1; return r
_rec._compile_init = _timed
import trivpn.cli as cli
mark("imports: interpreter, trivpn.cli, trio")
argv = ["connect", sys.argv[1]]
args = cli.build_parser(cli.core_command(argv)).parse_args(argv)
from trivpn.cli_common import setup_logging
setup_logging(0, True, None)
import trio
from trivpn.workers.manager import primary_error  # noqa: F401
mark("parser, logging")
async def connect():
    import socket, struct
    from trivpn.engine import Engine
    from trivpn.session.config import SessionConfig
    from trivpn.tun.linux import LinuxTun
    mark("imports: engine, session, TLS stack")
    profile = cli._load(args.profile)
    mark("profile")
    username, password = cli._credentials(profile, args)
    config = SessionConfig.from_profile(profile, no_reconnect=True, data_threads=True,
        low_latency=False, family=args.family, key_derivation=args.key_derivation,
        username=username, password=password)
    mark("SessionConfig")
    ours, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    far.setblocking(False)
    engine = Engine(config, LinuxTun(ours.detach(), "bench0"), handle_signals=True)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(engine.run)
        mark("handshake, tunnel up")
        def csum(b):
            t = sum(struct.unpack(f"!{len(b)//2}H", b))
            while t >> 16: t = (t & 0xFFFF) + (t >> 16)
            return ~t & 0xFFFF
        icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"phases"
        icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
        src = info.settings.ifconfig_local or "10.8.0.2"
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                          socket.inet_aton(src), socket.inet_aton("10.8.0.1"))
        far.send(hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + icmp)
        while True:
            await trio.lowlevel.wait_readable(far)
            reply = far.recv(65536)
            if len(reply) > 20 and reply[20] == 0:
                break
        mark("first ping reply")
        engine.request_stop("done")
trio.run(connect)
with open(sys.argv[2], "w") as f:
    f.write(f"compiles\t{_ct[1]}\t{_ct[0] * 1000:.3f}\n")
    for n, t in marks:
        f.write(f"{n}\t{t}\n")
'''


async def run_child(tree: Path, work: Path, pki: object) -> dict[str, float]:
    from trivpn.testing.loopback_server import LoopbackServerConfig, open_loopback_server

    child, out = work / "child.py", work / "out.txt"
    child.write_text(CHILD)
    out.unlink(missing_ok=True)
    async with open_loopback_server(LoopbackServerConfig(proto="udp", wrap="tls-crypt"), pki=pki) as server:
        profile = work / "p.ovpn"
        profile.write_text(server.client_profile("data-ciphers AES-256-GCM\n"))
        env = dict(os.environ, PYTHONPATH=str(tree),
                   PYTHONPYCACHEPREFIX=str(work / "pyc" / tree.as_posix().strip("/").replace("/", "_")))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        started = time.monotonic()
        proc = await trio.run_process([sys.executable, "-P", str(child), str(profile), str(out)],
                                      env=env, capture_stderr=True, check=False)
    if proc.returncode or not out.exists():
        raise SystemExit(proc.stderr.decode(errors="replace")[-2000:])
    row: dict[str, float] = {}
    prev = started
    for line in out.read_text().splitlines():
        parts = line.split("\t")
        if parts[0] == "compiles":
            row["records __init__ compiled (count)"] = float(parts[1])
            row["records __init__ compiled (ms)"] = float(parts[2])
            continue
        t = float(parts[1])
        row[parts[0] + " (ms)"] = (t - prev) * 1000
        prev = t
    row["start → first ping (ms)"] = (prev - started) * 1000
    return row


async def main() -> None:
    from trivpn.testing.pki import generate_pki

    base, rounds, out = Path(sys.argv[1]).resolve(), int(sys.argv[2]), Path(sys.argv[3])
    this = Path.cwd().resolve()
    pki = generate_pki()
    runs: dict[str, list[dict[str, float]]] = {"this": [], "base": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for tree in (this, base):  # warm-up: fills each tree's bytecode cache
            await run_child(tree, work, pki)
        for r in range(rounds):
            order = [("this", this), ("base", base)] if r % 2 == 0 else [("base", base), ("this", this)]
            for name, tree in order:
                runs[name].append(await run_child(tree, work, pki))
    summary = {}
    for key in runs["this"][0]:
        a = [x[key] for x in runs["this"]]
        b = [x[key] for x in runs["base"]]
        summary[key] = {"this_median": statistics.median(a), "base_median": statistics.median(b),
                        "paired_diff_median": statistics.median(x - y for x, y in zip(a, b, strict=True)),
                        "this_lower_rounds": sum(x < y for x, y in zip(a, b, strict=True))}
        s = summary[key]
        print(f"{key:42s} this {s['this_median']:8.2f}  base {s['base_median']:8.2f}  "
              f"paired diff {s['paired_diff_median']:+7.2f}  lower in {s['this_lower_rounds']}/{rounds}")
    out.write_text(json.dumps({"script": "docs/bench/scripts/issue16_startup_phases.py", "base": str(base),
                               "rounds": rounds, "summary": summary, "runs": runs}, indent=1))


trio.run(main)
