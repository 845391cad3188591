"""TunSink: packets go to a kernel TUN at once while nothing is queued, and never overtake
the ones the kernel pushed back (a LinuxTun over a SOCK_SEQPACKET pair stands in for it)."""

from __future__ import annotations

import socket

import trio

from trivpn.server.tun import TunSink
from trivpn.tun.linux import LinuxTun


def _tun(sndbuf: int) -> tuple[LinuxTun, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return LinuxTun(ours.detach(), "fake0", mtu=1500, max_batch=64), theirs


async def test_written_at_once_when_idle_and_in_order_under_back_pressure() -> None:
    tun, peer = _tun(4096)
    peer.setblocking(False)
    sink = TunSink(16)
    packets = [bytes([0x45, i % 256]) * 500 for i in range(60)]
    got: list[bytes] = []
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(sink.run, tun)  # the writer has adopted the kernel TUN
                sink.send_nowait(packets[:1])
                assert peer.recv(2048) == packets[0]  # written by the caller, no task ran
                # more than the socket buffer holds: the rest queues behind, in order
                sink.send_nowait(packets[1:30])
                sink.send_nowait(packets[30:])
                while len(got) < len(packets) - 1:
                    await trio.lowlevel.wait_readable(peer)
                    while True:
                        try:
                            got.append(peer.recv(2048))
                        except BlockingIOError:
                            break
                nursery.cancel_scope.cancel()
    finally:
        tun.close()
        peer.close()
    assert got == packets[1:]
    assert tun.stats.packets_written == len(packets)
