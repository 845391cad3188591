"""One-off (issue 16): how often trivpn's client sleeps and wakes during a TCP upload, per
server setting (`bench vpn --server-tcp shipped|nodelay`).

Why: against an OpenVPN server with TCP_NODELAY the client spent ≈ 30 % more CPU per GB
uploaded (docs/performance.md, "The server's Nagle in the TCP cells"). The guess: during an
upload the server's packets to the client are the inner TCP's ACKs, and without Nagle each
one arrives as its own small TCP segment, so the client's data thread wakes (and reads) once
per segment. This counts it: every 50 ms the watcher reads the context switches of every
thread of the `trivpn connect` process (`/proc/PID/task/*/status`: a thread that sleeps in
`poll` and is woken counts one voluntary switch) and which iperf3 run is active in the
client's namespace (`-R`: download, else upload), and sums the switches per phase.

Usage (as root, from the project root, nothing else running):
    python3 docs/bench/scripts/issue16_tcp_wakeups.py RUNS OUT.json [BASE_TREE]
runs `bench vpn --cells tcp-aes-256-gcm --clients trivpn --rounds 1 --seconds 5` RUNS times
per server setting, alternating, and writes per run: switches during the upload and the
download, the bytes moved (from the bench's JSON) and switches per MB. With BASE_TREE (a
checkout of an older trivpn) the server is always at TCP_NODELAY and the runs alternate
between this tree's client and BASE_TREE's (`bench ab --base BASE_TREE --clients
trivpn-base`): the before/after of a change to the upload's wake-ups.
"""
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PERIOD = 0.05


def _pids(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _switches(pid: int) -> int:
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _phase() -> str | None:
    for pid in _pids("iperf3 -c"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-O" not in argv:
            return "load"  # the RTT-under-load run (no omitted warm-up): not counted
        return "down" if b"-R" in argv else "up"
    return None


def watch(stop: threading.Event, sums: dict[str, int]) -> None:
    last: dict[int, int] = {}
    while not stop.is_set():
        phase = _phase()
        for pid in _pids("trivpn connect"):
            now = _switches(pid)
            if pid in last and phase is not None:
                sums[phase] = sums.get(phase, 0) + now - last[pid]
            last[pid] = now
        time.sleep(PERIOD)


def one_run(mode: str, base: str | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as out:
        sums: dict[str, int] = {}
        stop = threading.Event()
        t = threading.Thread(target=watch, args=(stop, sums))
        t.start()
        try:
            bench = ["ab", "--base", base, "--clients", "trivpn-base"] if base else ["vpn", "--clients", "trivpn"]
            subprocess.run([sys.executable, "-m", "trivpn.bench", *bench, "--cells", "tcp-aes-256-gcm",
                            "--rounds", "1", "--seconds", "5", "--server-tcp", mode,
                            "--out", out], check=True, stdout=subprocess.DEVNULL, timeout=300)
        finally:
            stop.set()
            t.join()
        run = json.loads((Path(out) / "bench-vpn.json").read_text())["runs"][0]
    up_mb = run["up_bytes"] / 1e6
    down_mb = (run["moved_bytes"] - run["up_bytes"]) / 1e6
    return {"server_tcp": mode, "tree": "base" if base else "this", "switches_up": sums.get("up", 0), "switches_down": sums.get("down", 0),
            "up_mb": round(up_mb, 1), "down_mb": round(down_mb, 1),
            "switches_per_mb_up": round(sums.get("up", 0) / up_mb, 1) if up_mb else None,
            "switches_per_mb_down": round(sums.get("down", 0) / down_mb, 1) if down_mb else None,
            "tx_mbps": round(run["tx_mbps"]), "rx_mbps": round(run["rx_mbps"]),
            "cpu_up_s_per_gb": round(run["cpu_up_s"] / (run["up_bytes"] / 1e9), 2)}


def main() -> None:
    runs_each, out = int(sys.argv[1]), Path(sys.argv[2])
    base = sys.argv[3] if len(sys.argv) > 3 else None
    runs = []
    for i in range(runs_each):
        if base:
            for tree in ((None, base) if i % 2 == 0 else (base, None)):
                runs.append(one_run("nodelay", tree))
                print(json.dumps(runs[-1]), flush=True)
            continue
        for mode in (("shipped", "nodelay") if i % 2 == 0 else ("nodelay", "shipped")):
            runs.append(one_run(mode))
            print(json.dumps(runs[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out.write_text(json.dumps({"commit": commit, "base": base, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
