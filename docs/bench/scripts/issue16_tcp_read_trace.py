"""One-off (issue 16): what trivpn's TCP data thread does, read by read, during `bench vpn`.

Why: against an OpenVPN server with TCP_NODELAY the client's TCP upload cost more CPU per
GB than against the server as shipped (docs/performance.md, "The server's Nagle in the TCP
cells"), and counting context switches explained only part of it. This counts and times
every stream read, TUN batch sealed and blocking wait of the one data thread
(`tcpfast._Threads.both`), without changing the engine: it runs `bench vpn` with a
`sitecustomize` on PYTHONPATH that wraps those methods of each `_Threads` when the module
is imported by the `trivpn connect` child. The child writes its counters at exit.

Usage (as root, nothing else running), from the root of the tree to measure (an older
checkout too: the script uses the trivpn of the current directory):
    python3 PATH/TO/issue16_tcp_read_trace.py OUT.json
runs `bench vpn --cells tcp-chacha20-poly1305 --clients trivpn --rounds 1` once per server
setting (`--server-tcp nodelay`, then `shipped`) and writes, per run: reads by size
(powers of two), how many held at most one ACK (< 128 bytes), blocking waits, batches
sealed, and a stretch of 80 events from the middle of the upload (time in µs, `R` read of
n bytes, `S` batch of n packets sealed, `W` a wait that slept n µs). The counts cover the
whole run (pings, upload, download).
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HOOK = r'''
import atexit, collections, importlib.abc, importlib.util, json, os, sys, time

NAME = "trivpn.datachannel.tcpfast"
OUT = os.environ["TRIVPN_READ_TRACE_OUT"]
counts, sizes, events = collections.Counter(), collections.Counter(), []


def _install(threads):
    receive, seal, wait = threads._receive, threads._seal, threads._wait

    def _receive(*args):
        n = receive(*args)
        counts["reads"] += 1
        if n:
            sizes[1 << (n.bit_length() - 1)] += 1
            counts["reads_one_ack"] += n < 128
        len(events) < 400000 and events.append((time.monotonic(), "R", n))
        return n

    def _seal(batch, *args):
        counts["batches_sealed"] += 1
        counts["packets_sealed"] += len(batch)
        len(events) < 400000 and events.append((time.monotonic(), "S", len(batch)))
        return seal(batch, *args)

    def _wait(*args):
        start = time.monotonic()
        ready = wait(*args)
        counts["waits"] += 1
        len(events) < 400000 and events.append((start, "W", int((time.monotonic() - start) * 1e6)))
        return ready

    threads._receive, threads._seal, threads._wait = _receive, _seal, _wait


def _patch(module):
    init = module._Threads.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _install(self)

    module._Threads.__init__ = __init__


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != NAME:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


def _upload_stretch():
    # the middle of the first run of 200 events with at least 20 big sealed batches
    for i, (_t, kind, n) in enumerate(events):
        if kind == "S" and n >= 32 and sum(1 for e in events[i:i + 200] if e[1] == "S" and e[2] >= 16) > 20:
            mid = events[i + 5000:i + 5080]
            return [(round((t - mid[0][0]) * 1e6, 1), kind, n) for t, kind, n in mid] if mid else []
    return []


def _dump():
    if not counts:
        return  # not the process with the data thread (the bench, its probes)
    with open(OUT, "w") as f:
        json.dump({"counts": dict(counts), "read_sizes": {str(k): v for k, v in sorted(sizes.items())},
                   "upload_stretch": _upload_stretch()}, f)


sys.meta_path.insert(0, _Finder())
atexit.register(_dump)
'''


def one_run(mode: str, work: Path) -> dict[str, object]:
    hook = work / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK)
    trace = work / f"trace-{mode}.json"
    trace.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(hook), TRIVPN_READ_TRACE_OUT=str(trace))
    subprocess.run([sys.executable, "-m", "trivpn.bench", "vpn", "--clients", "trivpn", "--cells", "tcp-chacha20-poly1305",
                    "--rounds", "1", "--server-tcp", mode, "--out", str(work / mode)],
                   check=True, stdout=subprocess.DEVNULL, env=env, timeout=600)
    run = json.loads((work / mode / "bench-vpn.json").read_text())["runs"][0]
    got = json.loads(trace.read_text())
    return {"server_tcp": mode, "tx_mbps": round(run["tx_mbps"]),
            "rx_mbps": round(run["rx_mbps"]), **got}


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one_run(mode, Path(tmp)) for mode in ("nodelay", "shipped")]
    for r in runs:
        print(r["server_tcp"], r["counts"], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out.write_text(json.dumps({"commit": commit, "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
