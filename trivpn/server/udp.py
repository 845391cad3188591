"""One UDP server socket: batched receive, and one writer task every client shares.

Why one writer: trio lets only one task wait for a socket to become writable, and a UDP
socket that pushes back does so for every client alike. Clients hand (address, datagrams)
to a bounded queue without waiting; a full queue drops and counts, like a full socket
buffer would. Receive drains the socket with plain `recvfrom` until it would block (at
most MAX_BATCH datagrams), one trio checkpoint per burst.

Addresses are normalised to (host, port): an IPv4 peer of a dual-stack socket is
"::ffff:a.b.c.d" and sendto accepts the pair.
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from trivpn.networkio.transport import MAX_BATCH

__all__ = ["UDPListener"]

log = logging.getLogger("trivpn.server")

OUT_QUEUE = 256
_RECV_SIZE = 65536
#: A datagram that cannot leave is lost like any other (the protocol retransmits).
_TRANSIENT = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EMSGSIZE, errno.EPERM,
                        errno.ENOBUFS, errno.ECONNREFUSED, errno.EINVAL, errno.EAFNOSUPPORT})

Addr = tuple[str, int]


class UDPListener:
    """A bound UDP socket with its send queue (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._out_s, self._out_r = trio.open_memory_channel[tuple[Addr, list[bytes]]](OUT_QUEUE)
        self.send_dropped = 0

    @property
    def name(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"udp {host}:{port}"

    def send_nowait(self, addr: Addr, datagrams: list[bytes]) -> None:
        try:
            self._out_s.send_nowait((addr, datagrams))
        except trio.WouldBlock:
            self.send_dropped += len(datagrams)

    async def receive_batch(self) -> list[tuple[bytes, Addr]]:
        """The next burst of (datagram, (host, port)), never empty."""
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            batch: list[tuple[bytes, Addr]] = []
            while len(batch) < MAX_BATCH:
                try:
                    data, addr = self.sock.recvfrom(_RECV_SIZE)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # an ICMP error queued on the socket: not ours to end
                    log.debug("udp receive: %s", exc)
                    continue
                batch.append((data, (addr[0], addr[1])))
            if batch:
                return batch

    async def run_writer(self) -> None:
        async for addr, datagrams in self._out_r:
            for data in datagrams:
                await self._send_one(data, addr)

    async def _send_one(self, data: bytes, addr: Addr) -> None:
        for _ in range(100):  # bounded: a socket that never drains loses the datagram
            try:
                self.sock.sendto(data, addr)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    self.send_dropped += 1
                    return
                raise
        self.send_dropped += 1

    def close(self) -> None:
        self.sock.close()
