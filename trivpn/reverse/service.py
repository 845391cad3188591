"""Thin trio services running the reverse-tunnel cores.

`SessionRunner` runs one `Session` over one tunnel connection (plain TCP or TLS) in its own
nursery: a reader task (connection -> core), a writer task (core -> connection, woken by
a doorbell), and a timer task (heartbeats, deadlines). Events from the core are handled
synchronously and never block: data for a stream is appended to that stream's inbox,
which is bounded in bytes by the credit the core granted, so the reader never waits on a
slow stream (the GoTunnel read loop did, and stalled every stream and the heartbeat).

`StreamPipe` bridges one stream with one TCP socket (a public connection on the relay, the
local service on the client) in its own nursery: `pump_out` reads the socket and queues
bytes on the stream (waiting for StreamWritable when the core says the stream's send
buffer is full); `pump_in` writes the inbox to the socket and only then tells the core the
bytes were consumed, which is what returns credit to the peer. End of file on the socket
becomes FIN; FIN from the peer becomes `send_eof()` (half-close), and the pipe lives until
both directions ended. RST or a socket error aborts the pipe and closes the socket with
SO_LINGER 0, so the remote end sees a TCP reset, not a clean close.
"""

from __future__ import annotations

import logging
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
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()


def peer_name(stream: trio.SocketStream) -> str:
    try:
        addr = stream.socket.getpeername()
    except OSError:
        return "?"
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
        "inbox",
        "inbox_bytes",
        "ended",
        "reset",
        "_inbox_ev",
        "_writable",
        "scope",
        "observer",
        "requests_from_socket",
        "peer",
        "failed",
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
        self.sock: trio.SocketStream | None = None
        self.inbox: deque[bytes] = deque()
        self.inbox_bytes = 0
        self.ended = False
        self.reset = False
        self.failed = False
        self._inbox_ev = trio.Event()
        self._writable = trio.Event()
        self.scope = trio.CancelScope()
        self.observer = HttpObserver() if observe_http else None
        self.requests_from_socket = requests_from_socket

    # called synchronously from the runner's event dispatch ---------------------------

    def deliver(self, data: bytes) -> None:
        self.inbox.append(data)
        self.inbox_bytes += len(data)
        self._inbox_ev.set()

    def end(self) -> None:
        self.ended = True
        self._inbox_ev.set()

    def abort(self) -> None:
        self.reset = True
        self.scope.cancel()

    def writable(self) -> None:
        self._writable.set()

    # tasks --------------------------------------------------------------------------------

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

    async def pump_out(self) -> None:
        """Socket -> stream."""
        assert self.sock is not None
        runner = self.runner
        core = runner.session
        while True:
            data = await self.sock.receive_some(READ_SIZE)
            if not data:
                core.send_fin(self.sid, trio.current_time())
                runner.ring()
                return
            runner.metrics.bytes_in += len(data)
            self._observe(data, self.requests_from_socket)
            if not core.send_data(self.sid, data):
                self._writable = trio.Event()
                runner.ring()
                if core.pending_bytes(self.sid) > core.config.send_buffer // 2:
                    await self._writable.wait()
            else:
                runner.ring()

    async def pump_in(self) -> None:
        """Stream -> socket; credit goes back only after the socket took the bytes."""
        assert self.sock is not None
        runner = self.runner
        while True:
            if not self.inbox:
                if self.ended:
                    try:
                        await self.sock.send_eof()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
                    return
                self._inbox_ev = trio.Event()
                await self._inbox_ev.wait()
                continue
            batch = b"".join(self.inbox) if len(self.inbox) > 1 else self.inbox[0]
            self.inbox.clear()
            n = len(batch)
            self.inbox_bytes = 0
            self._observe(batch, not self.requests_from_socket)
            await self.sock.send_all(batch)
            runner.metrics.bytes_out += n
            runner.session.consumed(self.sid, n)
            runner.ring()

    async def _guard(self, pump: Callable[[], Awaitable[None]]) -> None:
        """A socket error in either direction aborts the whole pipe (no exception groups)."""
        try:
            await pump()
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
            StreamClosedError,
        ) as exc:
            log.debug("stream %d: %s", self.sid, exc)
            self.failed = True
            self.scope.cancel()

    async def run(self, opener: Callable[[], Awaitable[trio.SocketStream]]) -> None:
        """Open the socket, then both directions until both ended; abort on error or RST."""
        core = self.runner.session
        try:
            with self.scope:
                try:
                    self.sock = await opener()
                    self.runner.opened(self)  # a reset meanwhile cancels the nursery at once
                except (trio.BrokenResourceError, OSError, StreamClosedError) as exc:
                    log.debug("stream %d: %s", self.sid, exc)
                    self.failed = True
                    return
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guard, self.pump_out)
                    nursery.start_soon(self._guard, self.pump_in)
        finally:
            if self.failed or self.reset or self.scope.cancelled_caught:
                core.reset_stream(self.sid, ErrorCode.CANCEL)
                self.runner.ring()
                if self.sock is not None:
                    abort_socket(self.sock)
            elif self.sock is not None:
                await trio.aclose_forcefully(self.sock)


class SessionRunner:
    """Runs a Session over a trio stream; subclasses handle role-specific events."""

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
        self.metrics = metrics
        self.observe_http = observe_http
        self.pipes: dict[int, StreamPipe] = {}
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
            with trio.CancelScope(shield=True):
                with trio.move_on_after(FLUSH_GRACE):
                    await trio.aclose_forcefully(self.transport)
            self.done.set()
        return self.closed_event

    async def _reader(self) -> None:
        s = self.session
        while not s.closed:
            try:
                data = await self.transport.receive_some(TUNNEL_READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                s.receive_eof(trio.current_time())
                log.debug("tunnel read failed: %s", exc)
                data = None
            if data is None:
                pass
            elif not data:
                s.receive_eof(trio.current_time())
            else:
                try:
                    s.receive_data(data, trio.current_time())
                except RemoteProtocolError as exc:
                    log.warning("closing the session: %s", exc)
            self.dispatch()
            self.ring()
            if s.get_timer() < self._timer_at:
                self._timer_kick.set()
        # the writer flushes what is left (GOAWAY, AUTH_ERR) and ends the session

    async def _writer(self) -> None:
        s = self.session
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while True:
                out = s.data_to_send(trio.current_time())
                self.dispatch()
                if not out:
                    break
                try:
                    if s.closed:
                        with trio.move_on_after(FLUSH_GRACE):
                            await self.transport.send_all(b"".join(out))
                    else:
                        await self.transport.send_all(b"".join(out))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.debug("tunnel write failed: %s", exc)
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
            self.ring()

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
        self, pipe: StreamPipe, opener: Callable[[], Awaitable[trio.SocketStream]]
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
