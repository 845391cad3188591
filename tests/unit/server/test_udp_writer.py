"""The UDP listener's shared writer: a client's batch leaves as GSO sends, arrives as datagrams."""

from __future__ import annotations

import socket

import trio

from trivpn.server.udp import UDPListener


def _pair() -> tuple[socket.socket, socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setblocking(False)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    return server, peer


def _receive(peer: socket.socket, count: int) -> list[bytes]:
    return [peer.recv(65536) for _ in range(count)]


def test_batch_leaves_in_order_as_separate_datagrams() -> None:
    server, peer = _pair()
    listener = UDPListener(server)
    batch = [bytes([i]) * 1200 for i in range(40)] + [b"short", b"x" * 700, b"y" * 700]
    addr = peer.getsockname()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.run_writer)
            listener.send_nowait(addr, batch)
            got = await trio.to_thread.run_sync(_receive, peer, len(batch))
            nursery.cancel_scope.cancel()
        assert got == batch

    try:
        trio.run(main)
    finally:
        server.close()
        peer.close()
    assert listener.send_dropped == 0
    assert listener.gso_sends >= 1  # a machine without UDP GSO would show 0 (sent one by one)


def test_without_gso_every_datagram_is_its_own_send() -> None:
    server, peer = _pair()
    listener = UDPListener(server)
    listener.gso_max_size = 0  # what a kernel without UDP_SEGMENT leaves
    batch = [b"z" * 1400] * 10
    try:
        assert listener.send_now(peer.getsockname(), batch, 0) == len(batch)
        assert _receive(peer, len(batch)) == batch
    finally:
        server.close()
        peer.close()
    assert listener.gso_sends == 0
