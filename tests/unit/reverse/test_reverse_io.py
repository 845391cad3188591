"""The reverse tunnel's socket helpers: gather writes that keep order across short writes,
and the light-weight dialer used for the local service (loopback only)."""

from __future__ import annotations

import socket
from collections import deque

import pytest
import trio

from trivpn.reverse.service import Buffers, close_plain, connect_plain, send_some


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


def _drain(sock: socket.socket) -> bytes:
    got = bytearray()
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(got)
        if not data:
            return bytes(got)
        got += data


def test_send_some_keeps_order_through_short_writes() -> None:
    a, b = _pair()
    with a, b:
        parts = [bytes([i]) * (1000 + 777 * i) for i in range(200)]  # ~15 MB: many short writes
        bufs: Buffers = deque(parts)
        expected = b"".join(parts)
        total = len(expected)
        received = bytearray()
        sent = 0
        for _ in range(100_000):
            if not bufs:
                break
            sent += send_some(a, bufs)
            # what left the queue is exactly what the socket took
            assert sent + sum(len(x) for x in bufs) == total
            received += _drain(b)
        received += _drain(b)
        assert not bufs and sent == total
        assert bytes(received) == expected


def test_send_some_on_a_full_socket_takes_nothing() -> None:
    a, b = _pair()
    with a, b:
        filler: Buffers = deque([b"x" * (1 << 20)])
        send_some(a, filler)
        assert filler  # the 1 MiB did not fit
        before = len(filler[0])
        assert send_some(a, filler) == 0  # would block: nothing taken, nothing lost
        assert len(filler[0]) == before


async def test_connect_plain_reaches_a_listener() -> None:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        sock = await connect_plain("127.0.0.1", lsock.getsockname()[1])
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert not sock.getblocking()
            conn, _ = lsock.accept()
            with conn:
                sock.send(b"hi")
                assert conn.recv(2) == b"hi"
        finally:
            close_plain(sock)
        assert sock.fileno() == -1


async def test_connect_plain_refused_raises_oserror() -> None:
    with socket.socket() as bound:  # bound, not listening: refuses, and stays ours
        bound.bind(("127.0.0.1", 0))
        with trio.fail_after(10), pytest.raises(ConnectionRefusedError):
            await connect_plain("127.0.0.1", bound.getsockname()[1])
