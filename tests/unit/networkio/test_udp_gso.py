"""UDP sends with segmentation offload: same datagrams on the wire, fewer system calls."""

from __future__ import annotations

import errno
import os
import socket

import pytest
import trio

from trivpn.networkio.transport import Endpoint, UDPTransport

#: Bound on datagrams drained from the receiving socket in one test.
MAX_DRAIN = 1000


def _pair() -> tuple[UDPTransport, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    tx.connect(rx.getsockname())
    ep = Endpoint("127.0.0.1", rx.getsockname()[1], "udp", socket.AF_INET, rx.getsockname())
    return UDPTransport(tx, ep), rx


async def _drain(rx: socket.socket, expected: int) -> list[bytes]:
    got: list[bytes] = []
    with trio.move_on_after(5):
        while len(got) < expected and len(got) < MAX_DRAIN:
            await trio.lowlevel.wait_readable(rx)
            try:
                while len(got) < MAX_DRAIN:
                    got.append(rx.recv(65536))
            except BlockingIOError:
                pass
    return got


async def test_mixed_sizes_arrive_as_the_same_datagrams_in_order() -> None:
    transport, rx = _pair()
    try:
        packets = [bytes([i]) * 1400 for i in range(70)]  # more than one GSO run
        packets[10] = b"short"  # ends a run (shorter last segment)
        packets[11] = b"x" * 1500  # larger than its neighbours: a run of its own
        packets += [b"tail" * 3, b"", b"y" * 900, b"y" * 900]
        await transport.send_batch(packets)
        got = await _drain(rx, len(packets))
        assert got == packets
        assert transport.tx_packets == len(packets)
        assert 0 < transport.gso_sends < len(packets)  # batched, yet not one call per packet
    finally:
        transport.close()
        rx.close()


async def test_gso_refusal_falls_back_to_single_datagrams() -> None:
    transport, rx = _pair()
    try:
        transport.gso_max_size = 0  # as after EIO from a device without support
        packets = [b"z" * 1000] * 5
        await transport.send_batch(packets)
        assert await _drain(rx, 5) == packets
        assert transport.gso_sends == 0
    finally:
        transport.close()
        rx.close()


class _NoGSOSocket:
    """A socket whose GSO sends fail like a path that would need IP fragmentation."""

    def __init__(self, errno_: int) -> None:
        self.errno = errno_
        self.sent: list[bytes] = []
        self.gso_attempts = 0

    def send(self, data: bytes) -> int:
        self.sent.append(bytes(data))
        return len(data)

    def sendmsg(self, buffers: list[bytes], ancdata: object) -> int:
        self.gso_attempts += 1
        raise OSError(self.errno, os.strerror(self.errno))

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("err", "max_after"), [(errno.EINVAL, 1399), (errno.EMSGSIZE, 1399), (errno.EIO, 0)]
)
async def test_refused_gso_sizes_are_remembered_and_sent_singly(err: int, max_after: int) -> None:
    sock = _NoGSOSocket(err)
    ep = Endpoint("192.0.2.1", 1194, "udp", socket.AF_INET, ("192.0.2.1", 1194))
    transport = UDPTransport(sock, ep)  # type: ignore[arg-type]
    packets = [bytes([i]) * 1400 for i in range(8)]
    await transport.send_batch(packets)
    await transport.send_batch(packets)
    assert sock.sent == packets + packets  # nothing lost, order kept
    assert sock.gso_attempts == 1  # the refusal is remembered
    assert transport.gso_max_size == max_after
