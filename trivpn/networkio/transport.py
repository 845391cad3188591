"""UDP and TCP transports that move *batches* of OpenVPN packets.

Why not trio's socket methods directly: every `await sock.recv()` is a checkpoint, and a
checkpoint per datagram is what makes a naive Python tunnel slow. Here the socket is a plain
non-blocking stdlib socket; we wait for readability once with trio, then drain it with plain
`recv` calls until it would block (or the batch is full). Sending works the same way: plain
`send` until the kernel pushes back, and only then `wait_writable`.

UDP sends use generic segmentation offload (UDP_SEGMENT, Linux ≥ 4.18) where they can:
a run of equal-sized packets (the last may be shorter) leaves in one `sendmsg`, and the
kernel cuts it into datagrams, so a full batch costs a few system calls instead of one per
packet. Segments larger than the path allows (EINVAL/EMSGSIZE: the datagram would need IP
fragmentation) are sent one by one and that size is remembered; a kernel or device without
support (EIO, ENOPROTOOPT, ...) turns GSO off for the socket. Receivers see ordinary
datagrams either way.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Sequence

import trio

from trivpn.errors import SessionRestart
from trivpn.networkio.framing import FramingError, TCPFramer, frame_packets
from trivpn.records import dataclass

#: Upper bound on packets returned by one `recv_batch` (keeps latency and memory bounded).
MAX_BATCH = 64
#: Socket buffers large enough for a burst of full-size datagrams.
SOCKET_BUFFER = 4 * 1024 * 1024
_RECV_SIZE = 65536
#: `SOL_UDP` / `UDP_SEGMENT` (linux/udp.h); not exported by Python 3.11's socket module.
SOL_UDP = 17
UDP_SEGMENT = 103
#: Kernel limits of one GSO send: `UDP_MAX_SEGMENTS` and the largest UDP payload.
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
_GSO_SIZE = struct.Struct("=H")
_TCP_RECV_SIZE = 256 * 1024

Reporter = Callable[[str], None]

#: A datagram that cannot leave is lost like any other (the protocol retransmits); these
#: errors never end the session. EPERM is what a local firewall (nftables drop) returns.
_TRANSIENT_SEND_ERRORS = frozenset(
    {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EMSGSIZE, errno.EPERM, errno.ENOBUFS}
)
#: errnos meaning "this socket or device cannot do UDP GSO at all".
_GSO_UNSUPPORTED = frozenset(
    {errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
)


#: Outcomes of one GSO send attempt.
_SENT, _BLOCKED, _REGROUP = object(), object(), object()


class TransportError(SessionRestart):
    """The transport can no longer carry packets (peer closed TCP, socket error)."""


class StreamCorrupted(TransportError):
    """The TCP stream carried an impossible length prefix (injected or corrupted bytes)."""


class ResolveError(TransportError):
    """A remote's name did not resolve (retried for `resolv-retry` seconds)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A resolved remote: what we connect to and how."""

    host: str
    port: int
    proto: str  # "udp" | "tcp"
    family: socket.AddressFamily
    sockaddr: tuple[str, int] | tuple[str, int, int, int]

    @property
    def address(self) -> str:
        return str(self.sockaddr[0])

    def describe(self) -> str:
        addr = self.address
        shown = f"[{addr}]" if ":" in addr else addr
        return f"{shown}:{self.sockaddr[1]} ({self.proto}{'6' if self.family == socket.AF_INET6 else '4'})"


def _family_for(proto: str) -> int:
    if proto.endswith("6"):
        return socket.AF_INET6
    if proto.endswith("4"):
        return socket.AF_INET
    return socket.AF_UNSPEC


async def resolve(host: str, port: int, proto: str) -> list[Endpoint]:
    """Every address of `host` usable with `proto` (udp/udp4/udp6/tcp/tcp4/tcp6), in resolver order."""
    kind = "tcp" if proto.startswith("tcp") else "udp"
    socktype = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
    # An ASCII name goes down as bytes: given a str, the standard library's getaddrinfo runs
    # it through the "idna" codec even for "192.0.2.1", importing `encodings.idna` and
    # `stringprep` (≈ 1 ms of a client's start) to change nothing. Other names keep
    # trio's IDNA handling.
    query: str | bytes = host.encode("ascii") if host.isascii() else host
    try:
        infos = await trio.socket.getaddrinfo(query, port, _family_for(proto), socktype)
    except socket.gaierror as exc:
        raise ResolveError(f"cannot resolve {host!r}: {exc.strerror}") from None
    except UnicodeError as exc:  # the IDNA codec refused it (an empty label, say): no lookup ran
        raise ResolveError(f"cannot resolve {host!r}: not a valid host name ({exc})") from None
    out: list[Endpoint] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        # (the (int, bytes) form of sockaddr belongs to other families)
        if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(sockaddr[0], str):
            continue
        ep = Endpoint(host, port, kind, socket.AddressFamily(family), sockaddr)
        if ep not in out:
            out.append(ep)
    if not out:
        raise TransportError(f"{host!r} has no address usable with {proto}")
    return out


class _SocketTransport:
    """Shared non-blocking plumbing; subclasses define framing."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.rx_packets = 0
        self.tx_packets = 0
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.closed = False

    @property
    def proto(self) -> str:
        return self.endpoint.proto

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


class UDPTransport(_SocketTransport):
    """One OpenVPN packet per datagram, on a connected UDP socket."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint, report: Reporter | None = None) -> None:
        super().__init__(sock, endpoint)
        self._report = report
        self.refused = 0
        #: Largest segment size GSO may carry; 0 turns GSO off (see the module docstring).
        self.gso_max_size = GSO_MAX_BYTES
        self.gso_sends = 0

    def recv_nowait(self, limit: int = MAX_BATCH) -> list[bytes]:
        """Drain up to `limit` datagrams without blocking (`[]` when none is waiting).

        Shared by the trio reader and the data-plane thread (`datachannel.fastpath`).
        """
        recv = self.sock.recv
        batch: list[bytes] = []
        try:
            while len(batch) < limit:
                batch.append(recv(_RECV_SIZE))
        except BlockingIOError:
            pass
        except ConnectionRefusedError:
            # ICMP port unreachable: the server is not (yet) listening. Transient for UDP.
            self.refused += 1
            if self._report is not None:
                self._report(f"{self.endpoint.describe()}: connection refused (ICMP), still trying")
        except OSError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                if self._report is not None:
                    self._report(f"{self.endpoint.describe()}: {exc.strerror}, still trying")
            else:
                raise TransportError(f"UDP receive failed: {exc.strerror}") from None
        self.rx_packets += len(batch)
        return batch

    async def recv_batch(self) -> list[bytes]:
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            batch = self.recv_nowait()
            if batch:
                return batch

    def send_nowait(self, packets: Sequence[bytes], start: int = 0) -> int:
        """Send `packets[start:]` until the socket would block; return the first unsent index.

        Runs of equal-sized packets go out as one GSO send. A GSO send is all or nothing, so
        the caller can wait for writability and call again from the returned index.
        """
        n = len(packets)
        i = start
        while i < n:
            size = len(packets[i])
            j = i + 1
            if size <= self.gso_max_size:
                limit = min(n, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // max(size, 1))
                while j < limit and len(packets[j]) == size:
                    j += 1
                if j < limit and len(packets[j]) < size:
                    j += 1  # a shorter last segment is allowed
            if j - i > 1:
                result = self._send_gso(packets[i:j], size)
                if result is _BLOCKED:
                    break
                if result is _REGROUP:
                    continue  # gso_max_size changed: group again from the same packet
            elif not self._send_one(packets[i]):
                break
            i = j
        self.tx_packets += i - start
        return i

    async def send_batch(self, packets: Sequence[bytes]) -> None:
        n = len(packets)
        i = self.send_nowait(packets)
        while i < n:
            await trio.lowlevel.wait_writable(self.sock)
            i = self.send_nowait(packets, i)

    def _send_one(self, packet: bytes) -> bool:
        """False if the socket would block; True if sent or lost for good."""
        try:
            self.sock.send(packet)
        except BlockingIOError:
            return False
        except ConnectionRefusedError:
            self.refused += 1  # reported by the receive side; the datagram is simply lost
        except OSError as exc:
            if exc.errno not in _TRANSIENT_SEND_ERRORS:
                raise TransportError(f"UDP send failed: {exc.strerror}") from None
        return True

    def _send_gso(self, group: Sequence[bytes], size: int) -> object:
        """Send `group` (equal sizes, last maybe shorter) as one GSO super-datagram."""
        cmsg = [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))]
        try:
            self.sock.sendmsg([b"".join(group)], cmsg)
            self.gso_sends += 1
            return _SENT
        except BlockingIOError:
            return _BLOCKED
        except ConnectionRefusedError:
            self.refused += 1
            return _SENT
        except OSError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPERM, errno.ENOBUFS):
                return _SENT  # lost like any datagram (EPERM: a local firewall dropped it)
            if exc.errno in (errno.EINVAL, errno.EMSGSIZE):
                # Too big for one unfragmented datagram: never try this size again.
                self.gso_max_size = size - 1
            elif exc.errno in _GSO_UNSUPPORTED:
                self.gso_max_size = 0
            else:
                raise TransportError(f"UDP send failed: {exc.strerror}") from None
            return _REGROUP


class TCPTransport(_SocketTransport):
    """Packets with uint16 length prefixes on a TCP stream."""

    def __init__(
        self, sock: socket.socket, endpoint: Endpoint, frame_limit: Callable[[], int] | None = None
    ) -> None:
        """`frame_limit`: the largest frame length accepted now (a server session's
        limit depends on its state, `framing.server_frame_limit`); else any 16-bit one."""
        super().__init__(sock, endpoint)
        self._framer = TCPFramer()
        self._frame_limit = frame_limit

    async def recv_batch(self) -> list[bytes]:
        sock = self.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            packets: list[bytes] = []
            eof = False
            try:
                for _ in range(8):
                    data = sock.recv(_TCP_RECV_SIZE)
                    if not data:
                        eof = True
                        break
                    self.rx_bytes += len(data)
                    if self._frame_limit is not None:
                        self._framer.max_frame = self._frame_limit()
                    packets.extend(self._framer.feed(data))
                    if len(packets) >= MAX_BATCH:
                        break
            except BlockingIOError:
                pass
            except OSError as exc:
                raise TransportError(f"TCP receive failed: {exc.strerror}") from None
            except FramingError as exc:
                # the packets framed before the bad prefix are lost with the connection
                raise StreamCorrupted(f"the TCP stream from {self.endpoint.describe()} is corrupt ({exc})") from None
            if packets:
                self.rx_packets += len(packets)
                return packets
            if eof:
                raise TransportError("the server closed the TCP connection")

    async def send_batch(self, packets: Sequence[bytes]) -> None:
        data = memoryview(frame_packets(packets))
        sock = self.sock
        while data:
            try:
                n = sock.send(data)
                data = data[n:]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
            except OSError as exc:
                raise TransportError(f"TCP send failed: {exc.strerror}") from None
        self.tx_packets += len(packets)


Transport = UDPTransport | TCPTransport


def _new_socket(endpoint: Endpoint) -> socket.socket:
    kind = socket.SOCK_STREAM if endpoint.proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(endpoint.family, kind)
    try:
        sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_address(endpoint: Endpoint, local: str | None, lport: int | None) -> tuple[str, int]:
    """The local address to bind for `endpoint`: only the family in use is ever bound."""
    v6 = endpoint.family == socket.AF_INET6
    if local is not None and (":" in local) != v6:
        raise TransportError(
            f"local address {local} cannot reach {endpoint.describe()} (other address family)"
        )
    return (local or ("::" if v6 else "0.0.0.0"), lport or 0)


async def open_transport(
    endpoint: Endpoint,
    *,
    connect_timeout: float = 10.0,
    report: Reporter | None = None,
    bind_to: tuple[str, int] | None = None,
) -> Transport:
    """Connect a socket to `endpoint` (UDP: just fixes the peer; TCP: the handshake).

    Every failure to reach the endpoint is a `TransportError` (a session restart): a socket
    error such as ENETUNREACH (network down, no IPv6 route) or EAFNOSUPPORT (IPv6 disabled)
    must lead to the next attempt or address, never end the run."""
    try:
        sock = _new_socket(endpoint)
    except OSError as exc:
        raise TransportError(f"cannot open a socket for {endpoint.describe()}: {exc.strerror or exc}") from None
    try:
        if bind_to is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(bind_to)
            except OSError as exc:
                raise TransportError(f"cannot bind to {bind_to[0]} port {bind_to[1]}: {exc.strerror}") from None
        try:
            sock.connect(endpoint.sockaddr)
        except BlockingIOError:
            pass  # TCP: the handshake goes on (UDP's connect never blocks)
        except OSError as exc:
            raise TransportError(f"cannot reach {endpoint.describe()}: {exc.strerror or exc}") from None
        if endpoint.proto == "udp":
            return UDPTransport(sock, endpoint, report)
        with trio.move_on_after(connect_timeout) as scope:
            await trio.lowlevel.wait_writable(sock)
        if scope.cancelled_caught:
            raise TransportError(f"TCP connect to {endpoint.describe()} timed out")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise TransportError(f"TCP connect to {endpoint.describe()} failed: {os.strerror(err)}")
        return TCPTransport(sock, endpoint)
    except BaseException:
        sock.close()
        raise
