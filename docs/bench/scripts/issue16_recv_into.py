"""One-off (issue 16): ns per datagram of socket.recv(65536) / recv(4096) against recv_into a
preallocated buffer (+ a copy out), batches of 64 on loopback. Usage: python3 issue16_recv_into.py"""
import os
import statistics
import time

from trivpn.bench.profile import udp_pair as _udp_pair

a, peer = _udp_pair()
pkt = os.urandom(1424)
buf = bytearray(65536)
mv = memoryview(buf)


def fill(n: int = 64) -> None:
    for _ in range(n):
        peer.send(pkt)


def run(label, fn) -> None:
    ts = []
    for _ in range(300):
        fill()
        time.sleep(0.0005)
        t0 = time.thread_time_ns()
        fn()
        ts.append(time.thread_time_ns() - t0)
    print(f"{label:34s} {statistics.median(ts) / 64:7.0f} ns/pkt")


def r64k() -> None:
    for _ in range(64):
        a.recv(65536)


def r4k() -> None:
    for _ in range(64):
        a.recv(4096)


def rinto() -> None:
    for _ in range(64):
        n = a.recv_into(buf)
        bytes(mv[:n])


def rinto_slice() -> None:
    for _ in range(64):
        n = a.recv_into(buf)
        buf[:n]


for _ in range(2):
    run("recv(65536)", r64k)
    run("recv(4096)", r4k)
    run("recv_into + bytes(mv[:n])", rinto)
    run("recv_into + buf[:n] (bytearray)", rinto_slice)
