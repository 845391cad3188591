"""The thin trio service running one reverse-tunnel `Session` over one `Connection`.

Theory of operation
-------------------
`SessionRunner` runs one session in its own nursery: a reader task (connection -> core),
a writer task (core -> connection, woken by a doorbell) and a timer task (heartbeats,
deadlines). Events from the core are handled synchronously and never block: data for a
stream goes to that stream's `StreamPipe` (pipe.py), which writes it to its socket at
once or backlogs it, bounded by the credit the core granted, so the reader never waits
on a slow stream (the GoTunnel read loop did, and stalled every stream and the heartbeat).

Output (`SessionIO`, which also runs the reader and timer tasks): when the connection can write without a task (plain TCP, see
connection.py), the runner *writes synchronously* whenever the kernel takes the bytes:
`flush()` lets the task that made the output — a stream's reader, the tunnel reader —
send it on the spot, and only the leftover of a short write goes to the writer task,
which waits for the connection to be writable. A request therefore crosses one task
wake-up per process and direction. A TLS tunnel keeps the writer-task path for
everything. Ordering is kept because output always leaves in `data_to_send()` order,
through either the synchronous path or, once anything is left over, the writer alone.

The socket helpers live in sockets.py and are re-exported here for existing callers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import trio

from trivpn.errors import RemoteProtocolError
from trivpn.reverse import events as E
from trivpn.reverse.connection import TUNNEL_NOTSENT_LOWAT, TUNNEL_READ_SIZE, Connection
from trivpn.reverse.frames import ErrorCode
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.pipe import READ_SIZE, Opener, StreamPipe
from trivpn.reverse.session import Session
from trivpn.reverse.sockets import (
    IOV_BATCH,
    Buffers,
    abort_socket,
    close_plain,
    connect_plain,
    format_addr,
    parse_hostport,
    peer_name,
    plain_socket,
    send_some,
)

__all__ = [
    "FLUSH_GRACE",
    "IOV_BATCH",
    "READ_SIZE",
    "TUNNEL_NOTSENT_LOWAT",
    "TUNNEL_READ_SIZE",
    "Buffers",
    "SessionIO",
    "SessionRunner",
    "StreamPipe",
    "abort_socket",
    "close_plain",
    "connect_plain",
    "format_addr",
    "parse_hostport",
    "peer_name",
    "plain_socket",
    "send_some",
]

log = logging.getLogger("trivpn.reverse")

FLUSH_GRACE = 1.0  # seconds to flush a final GOAWAY / AUTH_ERR before closing
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class SessionIO:
    """Moves bytes and time between the core and the connection: reader, writer, timer.

    It knows nothing of events: after every step it calls `dispatch` (the runner's).
    """

    def __init__(self, session: Session, conn: Connection, dispatch: Callable[[], None]) -> None:
        self.session = session
        self.conn = conn
        self.dispatch = dispatch
        self._out: Buffers = deque()  # bytes produced but not yet taken by the connection
        self._flushing = False
        self._wake = trio.Event()
        self._timer_kick = trio.Event()
        self._drained = trio.Event()  # the writer took output from the core
        self._timer_at = float("inf")

    def ring(self) -> None:
        self._wake.set()

    def flush(self) -> None:
        """Send what the core has now, without waiting; anything left goes to the writer."""
        if not self.conn.sync_writes or self._out or self._flushing:
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
                    self.conn.send_now(bufs)
                except OSError as exc:
                    self._lost(exc)
                    bufs.clear()
                if bufs:
                    self._out = bufs
                    self._wake.set()
            if s.closed or s.wants_to_send:
                self._wake.set()
        finally:
            self._flushing = False

    async def reader(self) -> None:
        s = self.session
        full = False
        while not s.closed:
            try:
                data = await self.conn.receive(full)
            except _IO_ERRORS as exc:
                s.receive_eof(trio.current_time())
                log.debug("tunnel read failed: %s", exc)
            else:
                if not data:
                    s.receive_eof(trio.current_time())
                else:
                    full = len(data) == TUNNEL_READ_SIZE
                    self._feed(data)
            self.dispatch()
            self.flush()
            while s.reading_paused:  # the peer does not read what its input makes us send
                self._drained = trio.Event()
                self._wake.set()
                await self._drained.wait()
                self._feed(b"")
                self.dispatch()
                self.flush()
            if s.get_timer() < self._timer_at:
                self._timer_kick.set()
        # the writer flushes what is left (GOAWAY, AUTH_ERR) and ends the session

    def _feed(self, data: bytes) -> None:
        try:
            self.session.receive_data(data, trio.current_time())
        except RemoteProtocolError as exc:
            pre_auth = self.session.role == "relay" and not self.session.name
            log.log(logging.DEBUG if pre_auth else logging.WARNING, "closing the session: %s", exc)

    async def writer(self) -> None:
        """Returns once the session closed and its last bytes went (or the grace ran out)."""
        s = self.session
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while True:
                if not self._out:
                    out = s.data_to_send(trio.current_time())
                    self._drained.set()
                    self.dispatch()
                    if not out:
                        break
                    self._out.extend(out)
                try:
                    if s.closed:
                        with trio.move_on_after(FLUSH_GRACE):
                            await self.conn.send(self._out)
                        self._out.clear()
                    else:
                        await self.conn.send(self._out)
                except _IO_ERRORS as exc:
                    self._out.clear()
                    self._lost(exc)
                    break
            if s.closed:
                self._drained.set()
                return

    async def timer(self) -> None:
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

    def _lost(self, exc: BaseException) -> None:
        log.debug("tunnel write failed: %s", exc)
        self.session.receive_eof(trio.current_time())
        self.dispatch()


class SessionRunner:
    """Runs a Session over a Connection; subclasses handle role-specific events."""

    def __init__(
        self,
        session: Session,
        conn: Connection,
        metrics: Metrics,
        *,
        observe_http: bool = True,
        log_query: bool = False,
    ) -> None:
        self.session = session
        self.connection = conn
        self.metrics = metrics
        self.observe_http = observe_http
        self.log_query = log_query
        self.pipes: dict[int, StreamPipe] = {}
        self.io = SessionIO(session, conn, self.dispatch)
        self.closed_event: E.SessionClosed | None = None
        self.auth_failed: str | None = None
        self.nursery: trio.Nursery | None = None
        self.done = trio.Event()
        self.on_closed: Callable[[], None] | None = None

    def ring(self) -> None:
        self.io.ring()

    def flush(self) -> None:
        self.io.flush()

    def drop(self) -> None:
        """Abort the tunnel connection (as if the network dropped it)."""
        self.connection.abort()

    async def run(self) -> E.SessionClosed | None:
        """Until the session closes; returns why (None if cancelled from outside)."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(self.io.reader)
                nursery.start_soon(self._writer)
                nursery.start_soon(self.io.timer)
                self.dispatch()
                self.ring()
        finally:
            for pipe in list(self.pipes.values()):
                pipe.abort()
            self.metrics.state = "CLOSED"
            self.metrics.streams_active = 0
            with trio.CancelScope(shield=True):
                with trio.move_on_after(FLUSH_GRACE):
                    await self.connection.aclose()
            self.done.set()
        return self.closed_event

    async def _writer(self) -> None:
        await self.io.writer()
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    def dispatch(self) -> None:
        """Route the core's events: stream ones to their pipes, the rest to the hooks."""
        for ev in self.session.events():
            if isinstance(ev, E.StreamData):
                pipe = self.pipes.get(ev.stream_id)
                if pipe is not None:
                    pipe.deliver(ev.data)
                else:
                    self.session.consumed(ev.stream_id, len(ev.data))
            elif isinstance(ev, E.StreamWritable):
                pipe = self.pipes.get(ev.stream_id)
                if pipe is not None:
                    pipe.writable()
            elif isinstance(ev, E.StreamEnded):
                pipe = self.pipes.get(ev.stream_id)
                if pipe is not None:
                    pipe.end()
            elif isinstance(ev, E.StreamReset):
                pipe = self.pipes.get(ev.stream_id)
                if pipe is not None:
                    pipe.abort()
                self.on_stream_reset(ev)
            elif isinstance(ev, E.SessionClosed):
                self.closed_event = ev
                self.metrics.state = "CLOSED"
                quiet = ev.code == ErrorCode.NORMAL and not ev.by_peer or self._pre_auth()
                log.log(logging.DEBUG if quiet else logging.INFO, "session closed: %s", ev.reason)
            elif isinstance(ev, E.AuthFailed):
                self.auth_failed = ev.reason
            elif isinstance(ev, E.Pong):
                self.metrics.rtt = ev.rtt
            elif isinstance(ev, E.Ignored):
                log.debug("ignored: %s", ev.reason)
            else:
                self.on_event(ev)
        self.metrics.state = self.session.state.value

    def _pre_auth(self) -> bool:
        """A relay session from a source that never authenticated: its log is debug only."""
        return self.session.role == "relay" and not self.session.name

    def on_event(self, ev: E.Event) -> None:
        """Role-specific events (Authenticated, BindRequested, Bound, StreamOpened, ...)."""

    def on_stream_reset(self, ev: E.StreamReset) -> None:
        """Hook for metrics and logging of resets."""

    def opened(self, pipe: StreamPipe) -> None:
        """The pipe's socket is connected (client: the local service accepted)."""

    async def run_pipe(self, pipe: StreamPipe, opener: Opener) -> None:
        """Run one stream's pipe (its own nursery inside) and account for it."""
        self.pipes[pipe.sid] = pipe
        self.metrics.streams_active += 1
        self.metrics.streams_total += 1
        try:
            await pipe.run(opener)
        finally:
            self.metrics.streams_active -= 1
            self.pipes.pop(pipe.sid, None)
