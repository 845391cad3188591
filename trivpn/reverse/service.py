"""Thin trio services running the reverse-tunnel cores.

Theory of operation
-------------------
`SessionRunner` runs one `Session` over one tunnel connection in its own nursery: a reader
task (connection -> core), a writer task (core -> connection, woken by a doorbell) and a
timer task (heartbeats, deadlines). Events from the core are handled synchronously and
never block: data for a stream goes to that stream's socket at once, or into its backlog,
which is bounded in bytes by the credit the core granted, so the reader never waits on a
slow stream (the GoTunnel read loop did, and stalled every stream and the heartbeat).

Latency comes from hops, not from bytes: every task wake-up is one trip round the trio
run loop, every failed `recv` one wasted system call. So on a plain TCP tunnel the runner
*writes synchronously* whenever the kernel takes the bytes (`flush()`: the task that made
the output — a stream's reader, the tunnel reader — sends it on the spot, non-blocking),
and only the leftover of a short write goes to the writer task, which waits for the
socket to be writable. Likewise a stream's inbound bytes are written to its socket from
the dispatch itself, and a drain task exists only while that socket is backed up. A
request therefore crosses one task wake-up per process and direction. Reads wait for
readiness first, except right after a full read, when more is likely queued. A TLS
tunnel (no non-blocking write without a task) keeps the writer-task path for everything.
Ordering is kept because output always leaves in `data_to_send()` order, through either
the synchronous path or, once anything is left over, the writer alone.

`StreamPipe` bridges one stream with one TCP socket (a public connection on the relay, the
local service on the client), owned as a plain non-blocking socket. It runs in its own
nursery with *one* task in the common case — socket -> stream — plus a drain task while
the socket cannot take what the stream delivered; this keeps an idle stream to a few KiB.
The socket's bytes are queued on the stream (waiting for StreamWritable when the core says
the stream's send buffer is full); bytes for the socket are counted as consumed only once
the socket took them, which is what returns credit to the peer. End of file on the socket
becomes FIN; FIN from the peer becomes `shutdown(SHUT_WR)` (half-close), and the pipe lives
until both directions ended. RST or a socket error aborts the pipe and closes the socket
with SO_LINGER 0, so the remote end sees a TCP reset, not a clean close.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.reverse import session as S
from trivpn.reverse.frames import ErrorCode
from trivpn.reverse.httplog import HttpObserver
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.session import StreamClosedError

log = logging.getLogger("trivpn.reverse")

READ_SIZE = 64 * 1024
TUNNEL_READ_SIZE = 256 * 1024
FLUSH_GRACE = 1.0  # seconds to flush a final GOAWAY / AUTH_ERR before closing
#: Unsent bytes the kernel may hold for the tunnel socket before it reports "not writable".
#: trio's default (16 KiB) makes bulk transfers wake the writer every 16 KiB.
TUNNEL_NOTSENT_LOWAT = 256 * 1024
IOV_BATCH = 64  # buffers per sendmsg()
_LINGER_RST = struct.pack("ii", 1, 0)
_PIPE_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, StreamClosedError)

Buffers = deque[bytes | memoryview]


def parse_hostport(value: str, what: str, default_host: str = "") -> tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT' or ':PORT' -> (host, port); one clear line on error."""
    host, sep, port_s = value.rpartition(":")
    if not sep:
        raise ConfigError(f"{what} must be HOST:PORT, not {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"{what} has a bad port: {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what} port must be 0..65535, not {port}")
    return host or default_host, port


def abort_socket(stream: trio.abc.Stream) -> None:
    """Close so that the peer sees a TCP RST (SO_LINGER 0), not an orderly FIN."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
        sock.close()


def plain_socket(tsock: trio.socket.SocketType) -> socket.socket:
    """Take the OS socket out of a trio socket (which is unusable afterwards).

    The services do their own non-blocking I/O on it, waiting with trio's wait_readable /
    wait_writable only when the kernel says it would block.
    """
    family, type_, proto = tsock.family, tsock.type, tsock.proto
    sock = socket.socket(family, type_, proto, fileno=tsock.detach())
    sock.setblocking(False)
    if family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def close_plain(sock: socket.socket, *, reset: bool = False) -> None:
    """Close an owned socket, waking any task waiting on it; `reset` sends RST, not FIN."""
    if sock.fileno() < 0:
        return
    if reset:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        except OSError:
            pass
    trio.lowlevel.notify_closing(sock)
    sock.close()


async def connect_plain(host: str, port: int) -> socket.socket:
    """TCP connect with a bare non-blocking socket, trying each address in turn.

    Much lighter than `trio.open_tcp_stream` (no happy-eyeballs nursery and tasks per
    dial), which matters when thousands of streams open at once; for the local service
    behind `expose` trying the addresses one after the other is enough.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    for family, type_, proto, _name, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            rc = sock.connect_ex(addr)
            if rc == errno.EINPROGRESS:
                await trio.lowlevel.wait_writable(sock)
                rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if rc:
                raise OSError(rc, os.strerror(rc))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            close_plain(sock)
            error = exc
        except BaseException:
            close_plain(sock)
            raise
    raise error


def send_some(sock: socket.socket, bufs: Buffers) -> int:
    """One non-blocking gather write of the queued buffers; drops what went, returns its size."""
    try:
        if len(bufs) == 1:
            n = sock.send(bufs[0])
        else:
            n = sock.sendmsg([bufs[i] for i in range(min(len(bufs), IOV_BATCH))])
    except BlockingIOError:
        return 0
    left = n
    while left:
        first = bufs[0]
        size = len(first)
        if size <= left:
            bufs.popleft()
            left -= size
        else:
            bufs[0] = memoryview(first)[left:]
            left = 0
    return n


def peer_name(stream: trio.SocketStream | trio.socket.SocketType | socket.socket) -> str:
    sock = getattr(stream, "socket", stream)
    try:
        addr = sock.getpeername()
    except OSError:
        return "?"
    return format_addr(addr)


def format_addr(addr: object) -> str:
    if isinstance(addr, tuple):
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


class StreamPipe:
    """One stream <-> one socket; see the module docstring."""

    __slots__ = (
        "runner",
        "sid",
        "sock",
        "backlog",
        "backlog_bytes",
        "ended",
        "eof_sent",
        "reset",
        "failed",
        "closed",
        "draining",
        "nursery",
        "observer",
        "requests_from_socket",
        "peer",
        "_writable",
        "_in_done",
    )

    def __init__(
        self,
        runner: SessionRunner,
        sid: int,
        peer: str,
        observe_http: bool,
        requests_from_socket: bool,
    ) -> None:
        self.runner = runner
        self.sid = sid
        self.peer = peer
        self.sock: socket.socket | None = None
        self.backlog: Buffers | None = None  # bytes for the socket it could not take yet
        self.backlog_bytes = 0
        self.ended = False  # the peer half-closed: shut our socket's write side when drained
        self.eof_sent = False
        self.reset = False
        self.failed = False
        self.closed = False
        self.draining = False
        self.nursery: trio.Nursery | None = None
        self.observer = HttpObserver() if observe_http else None
        self.requests_from_socket = requests_from_socket
        self._writable: trio.Event | None = None
        self._in_done: trio.Event | None = None

    # called synchronously from the runner's event dispatch ---------------------------

    def deliver(self, data: bytes) -> None:
        """Bytes from the peer: to the socket now if it takes them, else to the backlog."""
        if self.closed:
            self.runner.session.consumed(self.sid, len(data))
            return
        self._observe(data, not self.requests_from_socket)
        sock = self.sock
        if sock is not None and not self.backlog:
            try:
                n = sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._fail(exc)
                return
            if n:
                self.runner.metrics.bytes_out += n
                self.runner.session.consumed(self.sid, n)
            if n == len(data):
                return
            rest: bytes | memoryview = memoryview(data)[n:]
        else:
            rest = data
        if self.backlog is None:
            self.backlog = deque()
        self.backlog.append(rest)
        self.backlog_bytes += len(rest)
        self._start_drain()

    def end(self) -> None:
        self.ended = True
        if self.sock is not None and not self.backlog and not self.closed:
            self._send_eof()

    def abort(self) -> None:
        self.reset = True
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def writable(self) -> None:
        if self._writable is not None:
            self._writable.set()

    # helpers ------------------------------------------------------------------------------

    def _observe(self, data: bytes, is_request: bool) -> None:
        obs = self.observer
        if obs is None or not obs.active:
            return
        now = trio.current_time()
        if is_request:
            obs.feed_request(data, now)
        else:
            for ex in obs.feed_response(data, now):
                self.runner.metrics.record_http(ex)
                log.info("%s", ex.line())

    def _fail(self, exc: BaseException) -> None:
        log.debug("stream %d: %s", self.sid, exc)
        self.failed = True
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def _send_eof(self) -> None:
        if self.eof_sent or self.sock is None:
            return
        self.eof_sent = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if self._in_done is not None:
            self._in_done.set()

    def _start_drain(self) -> None:
        nursery = self.nursery
        if self.sock is not None and nursery is not None and not (self.draining or self.closed):
            self.draining = True
            nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        """Stream -> socket for what the socket could not take at once."""
        sock, backlog = self.sock, self.backlog
        assert sock is not None and backlog is not None
        runner = self.runner
        try:
            while backlog:
                await trio.lowlevel.wait_writable(sock)
                n = send_some(sock, backlog)
                if n:
                    self.backlog_bytes -= n
                    runner.metrics.bytes_out += n
                    runner.session.consumed(self.sid, n)
                    runner.flush()
            if self.ended:
                self._send_eof()
        except _PIPE_ERRORS as exc:
            self._fail(exc)
        finally:
            self.draining = False

    async def _pump_out(self) -> None:
        """Socket -> stream, until end of file (FIN) or an error (abort)."""
        sock = self.sock
        assert sock is not None
        runner = self.runner
        core = runner.session
        sid = self.sid
        half = core.config.send_buffer // 2
        full = False
        try:
            while True:
                if full:  # more is probably queued: just let the others run first
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.wait_readable(sock)
                try:
                    data = sock.recv(READ_SIZE)
                except BlockingIOError:
                    full = False
                    continue
                if not data:
                    core.send_fin(sid, trio.current_time())
                    runner.flush()
                    return
                full = len(data) == READ_SIZE
                runner.metrics.bytes_in += len(data)
                self._observe(data, self.requests_from_socket)
                ok = core.send_data(sid, data)
                runner.flush()
                if not ok and core.pending_bytes(sid) > half:
                    self._writable = trio.Event()
                    await self._writable.wait()
                    self._writable = None
        except _PIPE_ERRORS as exc:
            self._fail(exc)

    async def _both_ways(self, opener: Callable[[], Awaitable[socket.socket]]) -> None:
        if self.reset:
            return
        try:
            self.sock = await opener()
            self.runner.opened(self)  # a reset meanwhile cancels the nursery at once
        except _PIPE_ERRORS as exc:
            log.debug("stream %d: %s", self.sid, exc)
            self.failed = True
            return
        if self.backlog:
            self._start_drain()
        elif self.ended:
            self._send_eof()
        await self._pump_out()
        if not (self.eof_sent or self.failed):  # the other direction still flows
            self._in_done = trio.Event()
            await self._in_done.wait()

    async def run(self, opener: Callable[[], Awaitable[socket.socket]]) -> None:
        """Open the socket, then both directions until both ended; abort on error or RST."""
        runner = self.runner
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    await self._both_ways(opener)
                finally:
                    # the nursery may still checkpoint on its way out: from here on,
                    # deliveries are dropped and no drain task may start
                    self.closed = True
        finally:
            self.closed = True
            self.nursery = None
            sock, self.sock = self.sock, None
            if self.backlog:
                runner.session.consumed(self.sid, self.backlog_bytes)
                self.backlog = None
            if self.failed or self.reset:
                runner.session.reset_stream(self.sid, ErrorCode.CANCEL)
                runner.ring()
                if sock is not None:
                    close_plain(sock, reset=True)
            elif sock is not None:
                close_plain(sock)


class SessionRunner:
    """Runs a Session over a trio stream; subclasses handle role-specific events.

    A plain `trio.SocketStream` transport is taken over as an OS socket (see the module
    docstring); any other stream (TLS) is used through its async API.
    """

    def __init__(
        self,
        session: S.Session,
        transport: trio.abc.Stream,
        metrics: Metrics,
        *,
        observe_http: bool = True,
    ) -> None:
        self.session = session
        self.transport = transport
        self.sock: socket.socket | None = None
        if isinstance(transport, trio.SocketStream):
            self.sock = plain_socket(transport.socket)
            if hasattr(socket, "TCP_NOTSENT_LOWAT"):
                try:
                    self.sock.setsockopt(
                        socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, TUNNEL_NOTSENT_LOWAT
                    )
                except OSError:
                    pass
        self.metrics = metrics
        self.observe_http = observe_http
        self.pipes: dict[int, StreamPipe] = {}
        self._out: Buffers = deque()  # tunnel bytes produced but not yet taken by the kernel
        self._flushing = False
        self._wake = trio.Event()
        self._timer_kick = trio.Event()
        self._timer_at = float("inf")
        self.closed_event: S.SessionClosed | None = None
        self.auth_failed: str | None = None
        self.nursery: trio.Nursery | None = None
        self.done = trio.Event()
        self.on_closed: Callable[[], None] | None = None

    def ring(self) -> None:
        self._wake.set()

    def flush(self) -> None:
        """Send what the core has now, without waiting; anything left goes to the writer."""
        sock = self.sock
        if sock is None or self._out or self._flushing:
            self._wake.set()
            return
        s = self.session
        self._flushing = True
        try:
            out = s.data_to_send(trio.current_time())
            self.dispatch()
            if out:
                bufs: Buffers = deque(out)
                try:
                    send_some(sock, bufs)
                except OSError as exc:
                    log.debug("tunnel write failed: %s", exc)
                    s.receive_eof(trio.current_time())
                    self.dispatch()
                    bufs.clear()
                if bufs:
                    self._out = bufs
                    self._wake.set()
            if s.closed or s.wants_to_send:
                self._wake.set()
        finally:
            self._flushing = False

    def drop(self) -> None:
        """Abort the tunnel connection (as if the network dropped it)."""
        if self.sock is not None:
            close_plain(self.sock, reset=True)
        else:
            abort_socket(self.transport)

    async def run(self) -> S.SessionClosed | None:
        """Until the session closes; returns why (None if cancelled from outside)."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)
                nursery.start_soon(self._timer)
                self.dispatch()
                self.ring()
        finally:
            for pipe in list(self.pipes.values()):
                pipe.abort()
            self.metrics.state = "CLOSED"
            self.metrics.streams_active = 0
            if self.sock is not None:
                close_plain(self.sock)
            with trio.CancelScope(shield=True):
                with trio.move_on_after(FLUSH_GRACE):
                    await trio.aclose_forcefully(self.transport)
            self.done.set()
        return self.closed_event

    async def _receive(self, full: bool) -> bytes:
        """One read from the tunnel (b"" at end of file)."""
        sock = self.sock
        if sock is None:
            return await self.transport.receive_some(TUNNEL_READ_SIZE)
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

    async def _reader(self) -> None:
        s = self.session
        full = False
        while not s.closed:
            try:
                data: bytes | None = await self._receive(full)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                s.receive_eof(trio.current_time())
                log.debug("tunnel read failed: %s", exc)
                data = None
            if data is None:
                pass
            elif not data:
                s.receive_eof(trio.current_time())
            else:
                full = len(data) == TUNNEL_READ_SIZE
                try:
                    s.receive_data(data, trio.current_time())
                except RemoteProtocolError as exc:
                    log.warning("closing the session: %s", exc)
            self.dispatch()
            self.flush()
            if s.get_timer() < self._timer_at:
                self._timer_kick.set()
        # the writer flushes what is left (GOAWAY, AUTH_ERR) and ends the session

    async def _send(self, bufs: Buffers) -> None:
        """Write every buffer (the writer task only)."""
        sock = self.sock
        if sock is None:
            data = b"".join(bufs)
            bufs.clear()
            await self.transport.send_all(data)
            return
        while bufs:
            if not send_some(sock, bufs) and bufs:
                await trio.lowlevel.wait_writable(sock)
        await trio.lowlevel.checkpoint()  # bulk output must not starve the other tasks

    async def _writer(self) -> None:
        s = self.session
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while True:
                if not self._out:
                    out = s.data_to_send(trio.current_time())
                    self.dispatch()
                    if not out:
                        break
                    self._out.extend(out)
                try:
                    if s.closed:
                        with trio.move_on_after(FLUSH_GRACE):
                            await self._send(self._out)
                        self._out.clear()
                    else:
                        await self._send(self._out)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.debug("tunnel write failed: %s", exc)
                    self._out.clear()
                    s.receive_eof(trio.current_time())
                    self.dispatch()
                    break
            if s.closed:
                assert self.nursery is not None
                self.nursery.cancel_scope.cancel()
                return

    async def _timer(self) -> None:
        s = self.session
        while True:
            self._timer_at = s.get_timer()
            self._timer_kick = trio.Event()
            with trio.move_on_at(self._timer_at):
                await self._timer_kick.wait()
                continue
            s.handle_timer(trio.current_time())
            self.dispatch()
            self.flush()

    # events --------------------------------------------------------------------------------

    def dispatch(self) -> None:
        for ev in self.session.events():
            if isinstance(ev, S.StreamData):
                pipe = self.pipes.get(ev.stream_id)
                if pipe is not None:
                    pipe.deliver(ev.data)
                else:
                    self.session.consumed(ev.stream_id, len(ev.data))
            elif isinstance(ev, S.StreamWritable):
                pipe = self.pipes.get(ev.stream_id)
                if pipe is not None:
                    pipe.writable()
            elif isinstance(ev, S.StreamEnded):
                pipe = self.pipes.get(ev.stream_id)
                if pipe is not None:
                    pipe.end()
            elif isinstance(ev, S.StreamReset):
                pipe = self.pipes.get(ev.stream_id)
                if pipe is not None:
                    pipe.abort()
                self.on_stream_reset(ev)
            elif isinstance(ev, S.SessionClosed):
                self.closed_event = ev
                self.metrics.state = "CLOSED"
                level = (
                    logging.DEBUG
                    if ev.code == ErrorCode.NORMAL and not ev.by_peer
                    else logging.INFO
                )
                log.log(level, "session closed: %s", ev.reason)
            elif isinstance(ev, S.AuthFailed):
                self.auth_failed = ev.reason
            elif isinstance(ev, S.Pong):
                self.metrics.rtt = ev.rtt
            elif isinstance(ev, S.Ignored):
                log.debug("ignored: %s", ev.reason)
            else:
                self.on_event(ev)
        self.metrics.state = self.session.state.value

    def on_event(self, ev: S.Event) -> None:
        """Role-specific events (Authenticated, BindRequested, Bound, StreamOpened, ...)."""

    def on_stream_reset(self, ev: S.StreamReset) -> None:
        """Hook for metrics and logging of resets."""

    def opened(self, pipe: StreamPipe) -> None:
        """The pipe's socket is connected (client: the local service accepted)."""

    async def run_pipe(
        self, pipe: StreamPipe, opener: Callable[[], Awaitable[socket.socket]]
    ) -> None:
        """Run one stream's pipe (its own nursery inside) and account for it."""
        self.pipes[pipe.sid] = pipe
        self.metrics.streams_active += 1
        self.metrics.streams_total += 1
        try:
            await pipe.run(opener)
        finally:
            self.metrics.streams_active -= 1
            self.pipes.pop(pipe.sid, None)
