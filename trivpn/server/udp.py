"""One UDP server socket: batched receive, and one writer task every client shares.

Why one writer: trio lets only one task wait for a socket to become writable, and a UDP
socket that pushes back does so for every client alike. Clients hand (address, datagrams)
to a bounded queue without waiting; a full queue drops and counts, like a full socket
buffer would. Receive drains the socket with plain `recvfrom` until it would block (at
most MAX_BATCH datagrams), one trio checkpoint per burst.

The writer sends a client's batch without an await per datagram: plain sends until the
socket pushes back, and runs of equal-sized datagrams (the last may be shorter) as one
`sendmsg` with UDP generic segmentation offload (UDP_SEGMENT; the kernel cuts it into
ordinary datagrams), as the client's transport does (networkio/transport.py). A segment
size the path refuses (EINVAL/EMSGSIZE) is never grouped again; a kernel without GSO turns
it off for the socket.

Addresses are normalised to (host, port): an IPv4 peer of a dual-stack socket is
"::ffff:a.b.c.d" and sendto accepts the pair.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct

import trio

from trivpn.networkio.transport import (
    GSO_MAX_BYTES,
    GSO_MAX_SEGMENTS,
    MAX_BATCH,
    SOL_UDP,
    UDP_SEGMENT,
)

__all__ = ["UDPListener"]

log = logging.getLogger("trivpn.server")

OUT_QUEUE = 256
_RECV_SIZE = 65536
#: A datagram that cannot leave is lost like any other (the protocol retransmits).
_TRANSIENT = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EMSGSIZE, errno.EPERM,
                        errno.ENOBUFS, errno.ECONNREFUSED, errno.EINVAL, errno.EAFNOSUPPORT})
#: errnos meaning "this socket or device cannot do UDP GSO at all".
_GSO_UNSUPPORTED = frozenset({errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
#: How often one batch may wait for the socket to drain before the rest is dropped.
_WAITS = 100

Addr = tuple[str, int]
_GSO_SIZE = struct.Struct("=H")  # the cmsg carries a native u16


class UDPListener:
    """A bound UDP socket with its send queue (see the module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._out_s, self._out_r = trio.open_memory_channel[tuple[Addr, list[bytes]]](OUT_QUEUE)
        self.send_dropped = 0
        #: largest segment size a GSO send may carry; 0 turns GSO off (module docstring)
        self.gso_max_size = GSO_MAX_BYTES
        self.gso_sends = 0

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
            n = len(datagrams)
            i = self.send_now(addr, datagrams, 0)
            for _ in range(_WAITS):  # bounded: a socket that never drains loses the rest
                if i >= n:
                    break
                await trio.lowlevel.wait_writable(self.sock)
                i = self.send_now(addr, datagrams, i)
            else:
                self.send_dropped += n - i

    def send_now(self, addr: Addr, datagrams: list[bytes], start: int) -> int:
        """Send `datagrams[start:]` to `addr` until the socket would block; the first unsent
        index. Equal-sized runs go out as one GSO send (all or nothing)."""
        n = len(datagrams)
        i = start
        while i < n:
            size = len(datagrams[i])
            j = i + 1
            if size <= self.gso_max_size:
                limit = min(n, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // max(size, 1))
                while j < limit and len(datagrams[j]) == size:
                    j += 1
                if j < limit and len(datagrams[j]) < size:
                    j += 1  # a shorter last segment is allowed
            if j - i > 1:
                sent = self._send_gso(addr, datagrams[i:j], size)
                if sent is None:
                    continue  # gso_max_size changed: group again from the same datagram
                if not sent:
                    return i
            elif not self._send_one(datagrams[i], addr):
                return i
            i = j
        return n

    def _send_one(self, data: bytes, addr: Addr) -> bool:
        """False if the socket would block; True if sent or lost for good."""
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in _TRANSIENT:
                raise
            self.send_dropped += 1
        return True

    def _send_gso(self, addr: Addr, group: list[bytes], size: int) -> bool | None:
        """One GSO super-datagram: True sent (or lost), False would block, None regroup."""
        try:
            self.sock.sendmsg([b"".join(group)], [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))], 0, addr)
            self.gso_sends += 1
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EMSGSIZE):
                self.gso_max_size = size - 1  # too big for one unfragmented datagram here
            elif exc.errno in _GSO_UNSUPPORTED:
                self.gso_max_size = 0
            elif exc.errno in _TRANSIENT:
                self.send_dropped += len(group)
                return True
            else:
                raise
            return None

    def close(self) -> None:
        self.sock.close()
