"""The tunnel connection: one interface over plain TCP and TLS, used by relay and expose.

Theory of operation
-------------------
Latency comes from hops, not from bytes: every task wake-up is one trip round the trio
run loop, every failed `recv` one wasted system call. A plain TCP tunnel is therefore
taken over as a bare non-blocking OS socket (`PlainConnection`): `send_now` gives the
kernel what it takes *without waiting*, so the task that produced output can send it on
the spot, and reads wait for readiness first, except right after a full read, when more
is likely queued (`full`). Its kernel send buffer is capped with TCP_NOTSENT_LOWAT so a
bulk transfer does not wake the writer every 16 KiB, nor queue megabytes in the kernel.

TLS has no non-blocking write without a task, so `StreamConnection` (any trio stream;
in practice a `trio.SSLStream`) says `sync_writes = False`, takes nothing in `send_now`,
and everything goes through `send` from one writer task.

`accept` (relay: TLS handshake with a deadline when a context is given) and `dial`
(expose: connect, TLS with the name we dialled, a certificate the CA does not vouch for
becomes a FatalError) are the only places that choose between the two.
"""

from __future__ import annotations

import abc
import socket
import ssl

import trio

from trivpn.errors import FatalError
from trivpn.reverse.sockets import Buffers, abort_socket, close_plain, plain_socket, send_some

TUNNEL_READ_SIZE = 256 * 1024
#: Unsent bytes the kernel may hold for the tunnel socket before it reports "not writable".
#: trio's default (16 KiB) makes bulk transfers wake the writer every 16 KiB.
TUNNEL_NOTSENT_LOWAT = 256 * 1024
TLS_HANDSHAKE_TIMEOUT = 10.0  # relay: a client that does not finish TLS in time is dropped
CONNECT_TIMEOUT = 10.0  # expose: for the TCP connect, then again for the TLS handshake


class Connection(abc.ABC):
    """One tunnel connection as the session runner uses it; see the module docstring."""

    #: `send_now` can take bytes without a task switch (worth calling from any task)
    sync_writes = False

    @abc.abstractmethod
    async def receive(self, full: bool) -> bytes:
        """One read, b"" at end of file; `full` says the previous read filled the buffer."""

    @abc.abstractmethod
    def send_now(self, bufs: Buffers) -> int:
        """Give what the transport takes without waiting; drops it from `bufs`, returns its size."""

    @abc.abstractmethod
    async def send(self, bufs: Buffers) -> None:
        """Send every buffer (from one task only), emptying `bufs`."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Drop the connection at once (the peer sees a TCP reset)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close for good (the caller bounds the time it may take)."""


class PlainConnection(Connection):
    sync_writes = True

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream  # its socket is detached: kept only to be closed with us
        self.sock = plain_socket(stream.socket)
        if hasattr(socket, "TCP_NOTSENT_LOWAT"):
            try:
                self.sock.setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, TUNNEL_NOTSENT_LOWAT
                )
            except OSError:
                pass

    async def receive(self, full: bool) -> bytes:
        sock = self.sock
        while True:
            if full:
                await trio.lowlevel.checkpoint()
                full = False
            else:
                await trio.lowlevel.wait_readable(sock)
            try:
                return sock.recv(TUNNEL_READ_SIZE)
            except BlockingIOError:
                continue

    def send_now(self, bufs: Buffers) -> int:
        return send_some(self.sock, bufs)

    async def send(self, bufs: Buffers) -> None:
        sock = self.sock
        while bufs:
            if not send_some(sock, bufs) and bufs:
                await trio.lowlevel.wait_writable(sock)
        await trio.lowlevel.checkpoint()  # bulk output must not starve the other tasks

    def abort(self) -> None:
        close_plain(self.sock, reset=True)

    async def aclose(self) -> None:
        close_plain(self.sock)
        await trio.aclose_forcefully(self.stream)


class StreamConnection(Connection):
    """Any trio stream through its async API (TLS: a `trio.SSLStream`)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def receive(self, full: bool) -> bytes:
        data = await self.stream.receive_some(TUNNEL_READ_SIZE)
        return data if isinstance(data, bytes) else bytes(data)

    def send_now(self, bufs: Buffers) -> int:
        return 0

    async def send(self, bufs: Buffers) -> None:
        data = b"".join(bufs)
        bufs.clear()
        await self.stream.send_all(data)

    def abort(self) -> None:
        stream = self.stream
        abort_socket(stream.transport_stream if isinstance(stream, trio.SSLStream) else stream)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def wrap(stream: trio.abc.Stream) -> Connection:
    """The connection for an open trio stream: plain TCP taken over, anything else as is."""
    if isinstance(stream, trio.SocketStream):
        return PlainConnection(stream)
    return StreamConnection(stream)


async def accept(conn: trio.SocketStream, ctx: ssl.SSLContext | None) -> Connection:
    """Relay side of an accepted tunnel connection (TLS server handshake if `ctx`)."""
    if ctx is None:
        return PlainConnection(conn)
    tls = trio.SSLStream(conn, ctx, server_side=True)
    with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT) as scope:
        await tls.do_handshake()
    if scope.cancelled_caught:
        raise trio.BrokenResourceError("TLS handshake timed out")
    return StreamConnection(tls)


async def dial(host: str, port: int, ctx: ssl.SSLContext | None, server_name: str) -> Connection:
    """Expose side: connect to the relay (TLS verifying `server_name` if `ctx`)."""
    with trio.fail_after(CONNECT_TIMEOUT):
        sock = await trio.open_tcp_stream(host, port)
    if ctx is None:
        return PlainConnection(sock)
    tls = trio.SSLStream(sock, ctx, server_hostname=server_name)
    try:
        with trio.fail_after(CONNECT_TIMEOUT):
            await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(sock)
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise FatalError(
                f"TLS: the relay's certificate is not trusted for {server_name!r}: "
                f"{cause.verify_message or cause.reason}"
            ) from None
        raise
    return StreamConnection(tls)
