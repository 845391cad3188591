"""One-off (issue 16): watch the kernel's TCP state while `bench vpn` runs TCP cells.

Every second, for each server namespace of the benchmark (`tvb-*-s`): the namespace's
TcpExt counters (`nstat -asz`: prunes, receive-queue and backlog drops, zero-window
advertisements), the machine's TCP memory (`/proc/net/sockstat`, pages; the kernel
enters memory pressure above `net.ipv4.tcp_mem`'s middle value) and `ss -tinm` of the
iperf3 flows (rcv_ssthresh, buffer, drops). `summarize` turns the log into one row per
second: Mbit/s into the namespace, TCP memory, rcv_ssthresh of the bulk flow.

Usage: python3 issue16_tcp_pressure_watch.py watch LOG SECONDS   (as root, next to the bench)
       python3 issue16_tcp_pressure_watch.py summarize LOG        (JSON rows on stdout)
       python3 issue16_tcp_pressure_watch.py sockstat SECONDS     (every 0.2 s: the machine's
                                                                  TCP memory, max and samples
                                                                  above the pressure threshold)
"""
import ast
import json
import re
import subprocess
import sys
import time

KEYS = ("TcpExtTCPBacklogDrop", "TcpExtTCPRcvQDrop", "TcpExtPruneCalled", "TcpExtRcvPruned",
        "TcpExtTCPMemoryPressures", "TcpExtTCPOFODrop", "TcpExtTCPZeroWindowDrop",
        "TcpExtTCPRcvCollapsed", "TcpExtTCPWantZeroWindowAdv", "IpExtInOctets")


def _tcp_mem_pages() -> int:
    with open("/proc/net/sockstat") as f:
        return int(next(line for line in f if line.startswith("TCP:")).split()[-1])


def watch(log: str, seconds: float) -> None:
    end = time.time() + seconds
    with open(log, "w") as out:
        while time.time() < end:
            now = time.time()
            names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
            for ns in (n.split(" ")[0] for n in names):
                if not (ns.startswith("tvb-") and ns.endswith("-s")):
                    continue
                stat = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-asz"], capture_output=True, text=True).stdout
                vals = {p[0].replace("TcpExt", ""): int(p[1]) for p in (line.split() for line in stat.split("\n"))
                        if len(p) >= 2 and p[0] in KEYS}
                vals["sockstat_tcp_mem"] = _tcp_mem_pages()
                ss = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tinmH", "state", "established",
                                     "sport", "=", ":5201"], capture_output=True, text=True).stdout
                out.write(f"{now:.1f} {ns} NST {vals} SS " + " ".join(ss.split()) + "\n")
            out.flush()
            time.sleep(1)


def summarize(log: str) -> None:
    rows, prev = [], None
    for line in open(log):
        if " NST " not in line or not line.endswith("\n"):
            continue  # a line cut short when the watcher stopped
        head, rest = line.split(" NST ", 1)
        stamp, _ns = head.split()
        counters, ss = rest.split(" SS ", 1)
        vals = ast.literal_eval(counters)
        delta = {k: v - prev.get(k, 0) for k, v in vals.items()} if prev else {}
        prev = vals
        bulk = [m for m in re.finditer(r"bytes_received:(\d+).*?rcv_ssthresh:(\d+)", ss) if int(m.group(1)) > 10**6]
        rows.append({
            "t": float(stamp),
            "in_mbps": round(delta.get("IpExtInOctets", 0) * 8 / 1e6),
            "tcp_mem_pages": vals.get("sockstat_tcp_mem"),
            "rcv_ssthresh": [int(m.group(2)) for m in bulk],
            "events": {k: v for k, v in delta.items() if v and k not in ("IpExtInOctets", "sockstat_tcp_mem")},
        })
    json.dump(rows, sys.stdout, indent=None)


def sockstat(seconds: float) -> None:
    with open("/proc/sys/net/ipv4/tcp_mem") as f:
        pressure = int(f.read().split()[1])
    samples = []
    end = time.time() + seconds
    while time.time() < end:
        samples.append(_tcp_mem_pages())
        time.sleep(0.2)
    over = sum(1 for s in samples if s > pressure)
    print(f"max {max(samples)} pages; above tcp_mem[1] = {pressure} in {over} of {len(samples)} samples")


if __name__ == "__main__":
    if sys.argv[1:2] == ["sockstat"]:
        sockstat(float(sys.argv[2]))
    elif sys.argv[1:2] == ["watch"]:
        watch(sys.argv[2], float(sys.argv[3]))
    elif sys.argv[1:2] == ["summarize"]:
        summarize(sys.argv[2])
    else:
        raise SystemExit(__doc__)
