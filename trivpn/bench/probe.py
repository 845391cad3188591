"""One client run, measured from inside the client's network namespace.

Why a separate process: the start → first-ping time must be measured by something that is
already running *in the client's namespace* when the client starts, so neither
`ip netns exec` nor an interpreter start-up lands inside the figure. The orchestrator
(`trivpn.bench.vpn`) starts this module in the namespace with a JSON spec on stdin; it
starts the VPN client itself, probes with raw ICMP until the first reply, runs the
workloads (iperf3 both ways, ping idle and under load), reads the client's CPU time and
peak RSS from /proc, stops the client and prints one JSON object on stdout.

Where packets are lost: around each iperf3 run it reads the UDP counters of the receiving
side's network namespace (`/proc/<pid>/net/snmp` of a process inside it: the server's for
the upload, its own for the download), so a UDP cell reports how many datagrams the
receiving socket dropped because its buffer was full, and every cell reports the inner
TCP's retransmits (iperf3's sender). It also reads the VPN server's CPU time around each
iperf3 run: the OpenVPN server is one thread, so a direction where it runs near 100 % of a
core is bound by the server, and no client can move more there.

Stdlib only, and no trio: the probe must never be what limits a measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, field
from typing import Any

from trivpn.records import dataclass

#: Bound on any single wait for the client (start-up, the tunnel, shutdown).
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Seconds between raw ICMP probes while waiting for the tunnel.
PROBE_INTERVAL = 0.002
#: iperf3's server runs one test at a time and may still be closing the previous one.
IPERF_ATTEMPTS = 3
IPERF_BUSY_WAIT = 1.0
_TIME_RE = re.compile(r"time=([0-9.]+) ms")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Spec:
    """What to run and measure (sent by the orchestrator as JSON)."""

    client: str  # "trivpn" | "openvpn" (label only)
    argv: list[str]
    up_line: str  # a line of the client's output meaning "tunnel up"
    connect_line: str  # a line meaning "first packet to the server is on its way"
    target: str  # tunnel address of the server (iperf3 server and ping target)
    seconds: float = 3.0  # per iperf3 run
    omit: int = 0  # iperf3 -O
    pings: int = 100  # per RTT sample
    ping_interval: float = 0.01
    stop_signal: int = int(signal.SIGINT)
    env: dict[str, str | None] = field(default_factory=dict)  # overrides; None removes
    #: UDP cells: `/proc/<server pid>/net/snmp`, the server namespace's UDP counters
    server_snmp: str | None = None
    #: the VPN server's pid, for its CPU time during each iperf3 run (/proc is shared)
    server_pid: int | None = None
    #: iperf3 -C: the inner TCP's congestion control (None: the namespace's default)
    congestion: str | None = None


@dataclass(slots=True)
class Result:
    client: str
    ok: bool = False
    error: str = ""
    start_to_ping_s: float | None = None
    start_to_up_s: float | None = None
    handshake_s: float | None = None
    tx_mbps: float | None = None  # client → server (iperf3 default)
    rx_mbps: float | None = None  # server → client (iperf3 -R)
    rtt_idle_ms: list[float] = field(default_factory=list)
    rtt_load_ms: list[float] = field(default_factory=list)
    load_mbps: float | None = None
    cpu_s: float | None = None  # client CPU during both iperf3 runs
    idle_cpu_pct: float | None = None  # client CPU while the idle pings ran, % of one core
    moved_bytes: int = 0
    up_bytes: int = 0  # of moved_bytes: the upload's, the rest the download's
    peak_rss_mb: float | None = None
    #: UDP cells: datagrams the server's namespace delivered / dropped (receive buffer
    #: full) during the upload, and the client's namespace during the download
    server_udp_in: int | None = None
    server_udp_drops: int | None = None
    client_udp_in: int | None = None
    client_udp_drops: int | None = None
    #: the inner TCP's retransmits (iperf3's sender) in the upload and the download
    retransmits_up: int | None = None
    retransmits_down: int | None = None
    #: the VPN server's CPU during the upload and the download, % of one core
    server_cpu_up_pct: float | None = None
    server_cpu_down_pct: float | None = None
    #: the client's CPU in each direction (seconds), and its busiest thread's share of
    #: one core there: near 100 %, that thread bounds the direction
    cpu_up_s: float | None = None
    cpu_down_s: float | None = None
    top_thread_up_pct: float | None = None
    top_thread_down_pct: float | None = None
    #: the whole machine's idle time in each direction, % of all its cores (/proc/stat):
    #: near 0, the cores are full and what the client spends is taken from the others
    machine_idle_up_pct: float | None = None
    machine_idle_down_pct: float | None = None
    exit_code: int | None = None
    tail: str = ""


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"trivpn-bench"
    return body[:2] + struct.pack("!H", _checksum(body)) + body[4:]


def wait_first_reply(target: str, deadline: float, alive: Any) -> float | None:
    """Probe `target` with raw ICMP echoes until one is answered; return the reply time."""
    ident = os.getpid() & 0xFFFF
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        sock.setblocking(False)
        seq = 0
        while time.monotonic() < deadline and alive():
            seq = (seq + 1) & 0xFFFF
            with contextlib.suppress(OSError):  # no route yet: ENETUNREACH
                sock.sendto(_echo(ident, seq), (target, 0))
            ready, _, _ = select.select([sock], [], [], PROBE_INTERVAL)
            while ready:
                try:
                    pkt, (src, _port) = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                ihl = (pkt[0] & 0x0F) * 4
                if (
                    src == target
                    and len(pkt) >= ihl + 8
                    and pkt[ihl] == 0
                    and struct.unpack_from("!H", pkt, ihl + 4)[0] == ident
                ):
                    return time.monotonic()
        return None
    finally:
        sock.close()


class _Output:
    """Collects the client's output lines with the time each one arrived."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with self._lock:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    def first(self, needle: str) -> float | None:
        with self._lock:
            return next((t for t, ln in self.lines if needle in ln), None)

    def wait_for(self, needle: str, deadline: float) -> float | None:
        while time.monotonic() < deadline:
            t = self.first(needle)
            if t is not None:
                return t
            time.sleep(0.01)
        return None

    def tail(self, n: int = 30) -> str:
        with self._lock:
            return "\n".join(ln for _, ln in self.lines[-n:])

    def join(self) -> None:
        self._thread.join(timeout=2)


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def _peak_rss_mb(pid: int) -> float | None:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


class _ServerLoad:
    """The server's CPU (% of one core) from now until `pct` is called; None without a pid."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu0 = _cpu_seconds(pid) if pid is not None else 0.0
        self.t0 = time.monotonic()

    def pct(self) -> float | None:
        if self.pid is None:
            return None
        wall = time.monotonic() - self.t0
        return 100 * (_cpu_seconds(self.pid) - self.cpu0) / wall if wall > 0 else None


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime of each thread of `pid` (threads that ended are not listed)."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[int(tid)] = _cpu_seconds(pid, int(tid))
    return out


class _ThreadLoad:
    """The client's CPU from now until `result`: its total seconds, and the busiest
    thread's share of one core (a thread that started meanwhile counts from zero)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu0 = _cpu_seconds(pid)
        self.threads0 = thread_cpu_seconds(pid)
        self.t0 = time.monotonic()

    def result(self) -> tuple[float, float | None]:
        wall = time.monotonic() - self.t0
        total = _cpu_seconds(self.pid) - self.cpu0
        now = thread_cpu_seconds(self.pid)
        busiest = max((cpu - self.threads0.get(tid, 0.0) for tid, cpu in now.items()), default=None)
        return total, (100 * busiest / wall if busiest is not None and wall > 0 else None)


def machine_ticks(stat: str = "/proc/stat") -> tuple[int, int]:
    """(idle + iowait, all) clock ticks of all cores since boot, from the `cpu` line."""
    with open(stat) as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    return fields[3] + fields[4], sum(fields[:8])


class _MachineIdle:
    """The machine's idle share of all its cores from now until `pct`."""

    def __init__(self) -> None:
        self.idle0, self.all0 = machine_ticks()

    def pct(self) -> float | None:
        idle, total = machine_ticks()
        return 100 * (idle - self.idle0) / (total - self.all0) if total > self.all0 else None


SELF_SNMP = "/proc/self/net/snmp"


def udp_counters(snmp_path: str) -> tuple[int, int]:
    """(InDatagrams, RcvbufErrors) from a `/proc/…/net/snmp` file: the datagrams that
    network namespace delivered to sockets, and those it dropped at a full socket."""
    with open(snmp_path) as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    if len(rows) < 2:
        raise RuntimeError(f"{snmp_path} has no Udp counters")
    values = dict(zip(rows[0][1:], rows[1][1:], strict=False))
    return int(values["InDatagrams"]), int(values["RcvbufErrors"])


def _delta(before: tuple[int, int], after: tuple[int, int]) -> tuple[int, int]:
    return after[0] - before[0], after[1] - before[1]


def iperf(target: str, seconds: float, omit: int, reverse: bool,
          congestion: str | None = None) -> tuple[float, int, int | None]:
    """(Mbit/s received, bytes received, the sender's retransmits) of one iperf3 TCP run
    through the tunnel."""
    argv = ["iperf3", "-c", target, "-t", f"{seconds:g}", "-J"]
    if congestion is not None:
        argv += ["-C", congestion]
    if omit:
        argv += ["-O", str(omit)]
    if reverse:
        argv.append("-R")
    for attempt in range(IPERF_ATTEMPTS):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + omit + 30)
        try:
            data = json.loads(r.stdout)
        except ValueError:
            raise RuntimeError(f"iperf3 gave no JSON: {r.stderr.strip()[-300:]}") from None
        if "error" not in data:
            break
        if attempt + 1 == IPERF_ATTEMPTS:
            raise RuntimeError(f"iperf3: {data['error']}")
        time.sleep(IPERF_BUSY_WAIT)  # e.g. the server is still finishing the previous test
    recv = data["end"]["sum_received"]
    retrans = data["end"].get("sum_sent", {}).get("retransmits")
    return (recv["bits_per_second"] / 1e6, int(recv["bytes"]),
            int(retrans) if isinstance(retrans, int) else None)


def ping_rtts(target: str, count: int, interval: float) -> list[float]:
    """Per-reply RTTs (ms) of `count` echo requests, as the system ping reports them."""
    r = subprocess.run(
        ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1", target],
        capture_output=True,
        text=True,
        timeout=count * interval + 30,
    )
    return [float(m) for m in _TIME_RE.findall(r.stdout)]


def _ping_under_load(spec: Spec) -> tuple[list[float], float | None]:
    """(RTTs, load Mbit/s) of pings sent while a forward iperf3 run is going on."""
    load = subprocess.Popen(
        ["iperf3", "-c", spec.target, "-t", f"{spec.seconds + 1:g}", "-J",
         *(["-C", spec.congestion] if spec.congestion else [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        time.sleep(0.5)
        n = max(10, int(spec.seconds / spec.ping_interval / 2))
        rtts = ping_rtts(spec.target, n, spec.ping_interval)
        stdout, _ = load.communicate(timeout=spec.seconds + 30)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    try:
        data = json.loads(stdout)
        return rtts, data["end"]["sum_received"]["bits_per_second"] / 1e6
    except (ValueError, KeyError, TypeError):
        return rtts, None


def measure(spec: Spec) -> Result:
    res = Result(spec.client)
    env = dict(os.environ)
    for name, value in spec.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    t0 = time.monotonic()
    proc = subprocess.Popen(
        spec.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=env,
    )
    out = _Output(proc)
    try:
        deadline = t0 + START_TIMEOUT
        t_ping = wait_first_reply(spec.target, deadline, lambda: proc.poll() is None)
        if t_ping is None:
            raise RuntimeError("no ping reply through the tunnel")
        res.start_to_ping_s = t_ping - t0
        t_up = out.wait_for(spec.up_line, deadline)
        t_conn = out.first(spec.connect_line)
        if t_up is not None:
            res.start_to_up_s = t_up - t0
            if t_conn is not None:
                res.handshake_s = t_up - t_conn
        cpu_i, t_i = _cpu_seconds(proc.pid), time.monotonic()
        res.rtt_idle_ms = ping_rtts(spec.target, spec.pings, spec.ping_interval)
        res.idle_cpu_pct = 100 * (_cpu_seconds(proc.pid) - cpu_i) / (time.monotonic() - t_i)
        cpu0 = _cpu_seconds(proc.pid)
        srv0 = udp_counters(spec.server_snmp) if spec.server_snmp else None
        load = _ServerLoad(spec.server_pid)
        threads, idle = _ThreadLoad(proc.pid), _MachineIdle()
        res.tx_mbps, b1, res.retransmits_up = iperf(spec.target, spec.seconds, spec.omit,
                                                    reverse=False, congestion=spec.congestion)
        res.server_cpu_up_pct, res.machine_idle_up_pct = load.pct(), idle.pct()
        res.cpu_up_s, res.top_thread_up_pct = threads.result()
        if srv0 is not None and spec.server_snmp:
            res.server_udp_in, res.server_udp_drops = _delta(srv0, udp_counters(spec.server_snmp))
        cli0 = udp_counters(SELF_SNMP) if spec.server_snmp else None
        load = _ServerLoad(spec.server_pid)
        threads, idle = _ThreadLoad(proc.pid), _MachineIdle()
        res.rx_mbps, b2, res.retransmits_down = iperf(spec.target, spec.seconds, spec.omit,
                                                      reverse=True, congestion=spec.congestion)
        res.server_cpu_down_pct, res.machine_idle_down_pct = load.pct(), idle.pct()
        res.cpu_down_s, res.top_thread_down_pct = threads.result()
        if cli0 is not None:
            res.client_udp_in, res.client_udp_drops = _delta(cli0, udp_counters(SELF_SNMP))
        res.cpu_s = _cpu_seconds(proc.pid) - cpu0
        res.moved_bytes, res.up_bytes = b1 + b2, b1
        # RTT under load: ping while a forward iperf3 run fills the tunnel. A sample taken
        # while the load did not run (iperf3 server still busy) is thrown away and retaken.
        for _attempt in range(IPERF_ATTEMPTS):
            time.sleep(IPERF_BUSY_WAIT / 2)
            rtts, load_mbps = _ping_under_load(spec)
            if load_mbps:
                res.rtt_load_ms, res.load_mbps = rtts, load_mbps
                break
        res.peak_rss_mb = _peak_rss_mb(proc.pid)
        missing = missing_measurements(res, udp=bool(spec.server_snmp),
                                       server=spec.server_pid is not None)
        if missing:
            raise RuntimeError(f"measurement(s) missing: {', '.join(missing)}")
        res.ok = True
    except (RuntimeError, OSError, subprocess.SubprocessError, KeyError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        if proc.poll() is None:
            proc.send_signal(spec.stop_signal)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        res.exit_code = proc.returncode
        out.join()
        if not res.ok:
            res.tail = out.tail()
    return res


def missing_measurements(res: Result, *, udp: bool = False, server: bool = False) -> list[str]:
    """The figures a run promises but did not get; a run missing any is not `ok`. A UDP
    cell also promises the receive-drop counts of both directions, a run given the
    server's pid the server's CPU in both."""
    missing = [name for name in ("start_to_ping_s", "tx_mbps", "rx_mbps", "idle_cpu_pct", "peak_rss_mb",
                                 "top_thread_up_pct", "top_thread_down_pct",
                                 "machine_idle_up_pct", "machine_idle_down_pct")
               if getattr(res, name) is None]
    if not res.rtt_idle_ms:
        missing.append("rtt_idle_ms")
    if not res.rtt_load_ms:
        missing.append("rtt_load_ms (no sample while the load ran)")
    if not res.moved_bytes:
        missing.append("moved_bytes")
    if udp:
        missing += [name for name in ("server_udp_in", "server_udp_drops", "client_udp_in",
                                      "client_udp_drops") if getattr(res, name) is None]
    if server:
        missing += [name for name in ("server_cpu_up_pct", "server_cpu_down_pct")
                    if getattr(res, name) is None]
    return missing


def main() -> int:
    spec = Spec(**json.load(sys.stdin))
    res = measure(spec)
    json.dump(asdict(res), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
