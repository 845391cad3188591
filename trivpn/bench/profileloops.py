"""The data-plane part of `python -m trivpn.bench profile`: the real threads over loopback.

See `trivpn.bench.profile` for what is measured and why; this module holds the feeder
process that plays the network and the TUN's other end, the loop/latency stages and the
plain-thread relay floor.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from trivpn.bench.profile import (
    WAIT,
    Options,
    Report,
    Row,
    make_pair,
    median_per_packet,
    plain_packets,
    transport_on,
    tun_pair,
    udp_pair,
)

# ---------------------------------------------------------------------------------------
# the data-plane threads


def _thread_cpu_ns(name: str) -> Callable[[], int]:
    """A reader of the CPU time of the live thread called `name`."""
    for t in threading.enumerate():
        if t.name == name and t.ident is not None:
            clock = time.pthread_getcpuclockid(t.ident)
            return lambda: time.clock_gettime_ns(clock)
    raise RuntimeError(f"profile: no thread named {name!r}")


def _lone(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(ordered[len(ordered) // 2], 1),
        "p90": round(ordered[int(len(ordered) * 0.9)], 1),
        "n": len(ordered),
    }


#: The feeder process: the outside world of the data plane (the server's UDP socket and
#: the TUN's other end, fd numbers in argv), in its own interpreter so it never competes for our GIL.
#: Commands on stdin: op (1 byte: u = up burst, d = down burst, b = both at once (first half
#: up, second half down, sent interleaved), r = round trip), a gap in
#: µs to sleep first, packet count, payload length, then length-prefixed packets. It sends
#: them, waits for the matching arrivals, and answers with the nanoseconds from its first
#: send to its last arrival (8 bytes), or 0 if a packet got lost (each wait is bounded).
FEEDER = r"""
import os, socket, struct, sys, time
udp = socket.socket(fileno=int(sys.argv[1])); tun = socket.socket(fileno=int(sys.argv[2]))
udp.settimeout(%(wait)s); tun.settimeout(%(wait)s)
inp, out = sys.stdin.buffer, sys.stdout.buffer
def take(n):
    b = inp.read(n)
    if len(b) != n: raise SystemExit(0)
    return b
while True:
    op, gap, count, size = struct.unpack("=cIII", take(13))
    blob = take(size); pkts = []; i = 0
    while i < size:
        (n,) = struct.unpack_from("=H", blob, i); pkts.append(blob[i + 2:i + 2 + n]); i += 2 + n
    if gap: time.sleep(gap / 1e6)
    try:
        t0 = time.perf_counter_ns()
        if op == b"r":
            tun.send(pkts[0]); udp.recv(65536); udp.send(pkts[1]); tun.recv(65536)
        elif op == b"b":
            half = len(pkts) // 2
            for up, down in zip(pkts[:half], pkts[half:]): udp.send(up); tun.send(down)
            for _ in range(half): tun.recv(65536); udp.recv(65536)
        else:
            src, dst = (udp, tun) if op == b"u" else (tun, udp)
            for p in pkts: src.send(p)
            for _ in pkts: dst.recv(65536)
        took = time.perf_counter_ns() - t0
    except (TimeoutError, OSError):
        took = 0
    out.write(struct.pack("=Q", took)); out.flush()
"""


class _Feeder:
    """Drives the data plane from a child process (see `FEEDER`)."""

    def __init__(self, server: Any, peer: socket.socket, tun_peer: socket.socket) -> None:
        self.server = server
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FEEDER % {"wait": WAIT}, str(peer.fileno()),
             str(tun_peer.fileno())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            pass_fds=(peer.fileno(), tun_peer.fileno()),
        )

    def _run(self, op: bytes, packets: list[bytes], gap_us: int = 0) -> int:
        """Run one command; the feeder's ns from first send to last arrival."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        blob = b"".join(struct.pack("=H", len(p)) + p for p in packets)
        self.proc.stdin.write(struct.pack("=cIII", op, gap_us, len(packets), len(blob)) + blob)
        self.proc.stdin.flush()
        answer = self.proc.stdout.read(8)
        took: int = struct.unpack("=Q", answer)[0] if len(answer) == 8 else 0
        if not took:
            raise RuntimeError("profile: the feeder lost packets (or died)")
        return took

    def up_burst(self, wire: list[bytes], gap_us: int = 0) -> int:
        return self._run(b"u", wire, gap_us)

    def down_burst(self, plain: list[bytes], gap_us: int = 0) -> int:
        return self._run(b"d", plain, gap_us)

    def both_bursts(self, wire: list[bytes], plain: list[bytes]) -> int:
        return self._run(b"b", wire + plain)

    def round_trip(self, request: bytes, reply: bytes, gap_us: int = 0) -> int:
        """A ping through the tunnel: into the TUN, out as a sealed datagram, answered at
        once with a sealed `reply` (pre-sealed: the "server" costs nothing), out of the TUN."""
        return self._run(b"r", [request, reply], gap_us)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


#: `FastPathIO.warm_for` of the low-latency comparison (what `connect --low-latency` uses)
LOW_LATENCY_WARM_FOR = 0.1


def loop_stages(
    opt: Options, report: Report, *, warm_for: float = 0.0, other_layout: bool = False
) -> None:
    """Run the real data plane over the loopback fakes (see the module docstring); with
    `other_layout` the fixed two-thread layout too (one thread per direction), rows tagged
    "2t" (or, when TRIVPN_DATA_THREADS=2 made that the default, the adaptive one: "ad")."""
    trio.run(_loop_main, opt, report, warm_for, other_layout)


async def _loop_main(opt: Options, report: Report, warm_for: float, other: bool) -> None:
    from trivpn.datachannel.fastpath import FastPathIO, ThreadPlane
    from trivpn.datachannel.link import DataLink
    from trivpn.tun.linux import LinuxTun

    client, server = make_pair(opt.cipher)
    ours, peer = udp_pair()
    tun_ours, tun_peer = tun_pair()
    transport = transport_on(ours)
    tun = LinuxTun(tun_ours.fileno(), "fake0", mtu=max(1500, opt.size))
    to_muxer, from_wire = trio.open_memory_channel[list[bytes]](8)
    link = DataLink(time.monotonic)
    link.tx, link.rx = client.tx, client.rx
    io = FastPathIO(transport, tun, to_muxer, warm_for=warm_for)
    if other:
        io.split, io.adaptive = not io.split, True
    plane = ThreadPlane(io)
    feeder = _Feeder(server, peer, tun_peer)
    try:
        async with from_wire, trio.open_nursery() as nursery:
            nursery.start_soon(plane.run, link)
            await trio.to_thread.run_sync(_measure_loops, opt, report, feeder, plane, other)
            nursery.cancel_scope.cancel()
    finally:
        feeder.close()
        tun.close()
        tun_ours.detach()
        for s in (ours, peer, tun_peer):
            s.close()


def _measure_loops(
    opt: Options, report: Report, feeder: _Feeder, plane: Any, other: bool
) -> None:
    io, warm = plane.io, bool(plane.io.warm_for)
    layout = "2t" if io.split else ("ad" if io.adaptive else "1t")
    names = {"2t": ("trivpn data up", "trivpn data down"), "1t": ("trivpn data",),
             "ad": ("trivpn data", "trivpn data bulk")}[layout]
    deadline = time.monotonic() + WAIT
    while plane.threads is None or not all(
        any(t.name == n for t in threading.enumerate()) for n in names
    ):
        if time.monotonic() > deadline:
            raise RuntimeError("profile: the data-plane threads did not start")
        time.sleep(0.001)
    clocks = [_thread_cpu_ns(n) for n in names]
    up_cpu, down_cpu = clocks[0], clocks[-1]
    if layout == "ad":  # the first thread moves both directions until it hands bulk input over

        def up_cpu() -> int:
            return clocks[0]() + clocks[1]()

        down_cpu = clocks[0]

    def all_cpu() -> int:
        return sum(c() for c in clocks)

    tag = (" " + layout if other else "") + (" lowlat" if warm else "")
    b, rep = opt.batch, max(opt.repeat // 4, 3)
    plain = plain_packets(opt.size, b)
    server = feeder.server
    bursts = (
        ("loop-up", up_cpu, feeder.up_burst, lambda: server.tx.encrypt(plain, 0.0)),
        ("loop-down", down_cpu, feeder.down_burst, lambda: plain),
    )
    for name, cpu_of, burst, make in bursts if not warm else ():
        samples: list[tuple[int, int]] = []
        for _ in range(rep):
            packets = make()
            c0 = cpu_of()
            took = burst(packets)
            samples.append((cpu_of() - c0, took))
        cpu, wall = median_per_packet(samples, b)
        what = "socket → decrypt → TUN" if name == "loop-up" else "TUN → encrypt → socket"
        report.rows.append(Row(name + tag, cpu, wall, f"data thread, {what}, bursts of {b}"))
    if not warm:
        samples = []
        for _ in range(rep):
            wire = server.tx.encrypt(plain, 0.0)
            c0 = all_cpu()
            took = feeder.both_bursts(wire, plain)
            samples.append((all_cpu() - c0, took))
        cpu, wall = median_per_packet(samples, 2 * b)
        report.rows.append(Row("loop-both" + tag, cpu, wall,
                               f"a burst each way at once, {b} packets each"))
    one = plain_packets(opt.size, 1)
    kinds = (("cold", round(opt.gap_ms * 1000)),) if warm else (("hot", 0), ("cold", round(opt.gap_ms * 1000)))
    for kind, gap in kinds:
        c0, w0 = all_cpu(), time.perf_counter_ns()
        ups = [feeder.up_burst(server.tx.encrypt(one, 0.0), gap) / 1000 for _ in range(opt.lone)]
        downs = [feeder.down_burst(one, gap) / 1000 for _ in range(opt.lone)]
        replies = server.tx.encrypt(one * opt.lone, 0.0)
        rtts = [feeder.round_trip(one[0], reply, gap) / 1000 for reply in replies]
        if kind == "cold":
            cpu = (all_cpu() - c0) / (time.perf_counter_ns() - w0) * 100
            report.cold_cpu_pct[tag.strip() or "default"] = round(cpu, 2)
        report.lone_us[f"lone-up {kind}{tag}"] = _lone(ups)
        report.lone_us[f"lone-down {kind}{tag}"] = _lone(downs)
        report.lone_us[f"rtt {kind}{tag}"] = _lone(rtts)


def relay_floor(opt: Options, report: Report) -> None:
    """One packet through a minimal Python thread (poll, read, write), driven by the same
    feeder process: what any Python data thread pays for a hop here, without our code."""
    a_in, a_peer = udp_pair()
    b_in, b_peer = tun_pair()
    stop_r, stop_w = os.pipe()

    def relay() -> None:
        poller = select.poll()
        poller.register(a_in.fileno(), select.POLLIN)
        poller.register(stop_r, select.POLLIN)
        fd_in, fd_out = a_in.fileno(), b_in.fileno()
        while True:
            for fd, _ev in poller.poll():
                if fd == stop_r:
                    return
            try:
                os.write(fd_out, os.read(fd_in, 65536))
            except BlockingIOError:
                pass

    thread = threading.Thread(target=relay, name="trivpn profile relay", daemon=True)
    thread.start()
    feeder = _Feeder(None, a_peer, b_peer)
    pkt = plain_packets(opt.size, 1)
    try:
        for kind, gap in (("hot", 0), ("cold", round(opt.gap_ms * 1000))):
            hops = [feeder.up_burst(pkt, gap) / 1000 for _ in range(opt.lone)]
            report.lone_us[f"relay {kind}"] = _lone(hops)
    finally:
        feeder.close()
        os.write(stop_w, b"x")
        thread.join(WAIT)
        for s in (a_in, a_peer, b_in, b_peer):
            s.close()
        os.close(stop_r)
        os.close(stop_w)


__all__ = ["LOW_LATENCY_WARM_FOR", "loop_stages", "relay_floor"]
