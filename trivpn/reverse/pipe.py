"""`StreamPipe`: one tunnel stream bridged with one TCP socket (trio service).

Theory of operation
-------------------
A pipe joins a stream of the session with a plain non-blocking socket: a public
connection on the relay, the local service on the client. It runs in its own nursery
with *one* task in the common case — socket -> stream — plus a drain task only while the
socket cannot take what the stream delivered; this keeps an idle stream to a few KiB.

Towards the socket (`_TowardsSocket`): the session runner calls `deliver` synchronously
from its event dispatch; the bytes go to the socket at once if the kernel takes them,
else into a backlog, which the credit the core granted bounds in bytes, so the runner
never waits on a slow stream. Bytes count as consumed (returning credit to the peer)
only once the socket took them. FIN from the peer becomes `shutdown(SHUT_WR)` once the
backlog is written (half-close).

Towards the tunnel (`StreamPipe`): the socket's bytes are queued on the stream, waiting
for StreamWritable when the core says the stream's send buffer is full; end of file
becomes FIN. The pipe lives until both directions ended. RST, a socket error or being
cancelled before that (the program stops) aborts it and closes the socket with SO_LINGER
0, so the remote end sees a TCP reset, never a FIN that would pass a cut-off transfer as
complete.

The pipe sees its runner only through `PipeHost`, so it runs (and is tested) on its own.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from trivpn.reverse.bucket import Shaper
from trivpn.reverse.events import StreamClosedError
from trivpn.reverse.frames import ErrorCode
from trivpn.reverse.httplog import HttpObserver
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.session import Session
from trivpn.reverse.sockets import Buffers, close_plain, send_some

log = logging.getLogger("trivpn.reverse")

READ_SIZE = 64 * 1024
SHAPED_SEND = 64 * 1024  # largest single write of a bandwidth-limited stream
PIPE_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, StreamClosedError)

Opener = Callable[[], Awaitable[socket.socket]]


class PipeHost(Protocol):
    """What a pipe needs from the session runner that owns it."""

    session: Session
    metrics: Metrics
    log_query: bool  # show query strings in the request log (redacted by default)

    def flush(self) -> None: ...

    def ring(self) -> None: ...

    def opened(self, pipe: StreamPipe) -> None: ...


class _TowardsSocket:
    """The stream -> socket half of a pipe: deliver now, or backlog and drain."""

    __slots__ = (
        "runner",
        "sid",
        "sock",
        "backlog",
        "backlog_bytes",
        "ended",
        "eof_sent",
        "failed",
        "closed",
        "draining",
        "nursery",
        "observer",
        "requests_from_socket",
        "shaper",
        "_in_done",
    )

    def __init__(self, runner: PipeHost, sid: int, observer: HttpObserver | None) -> None:
        self.runner = runner
        self.sid = sid
        self.sock: socket.socket | None = None
        self.backlog: Buffers | None = None  # bytes for the socket it could not take yet
        self.backlog_bytes = 0
        self.ended = False  # the peer half-closed: shut our socket's write side when drained
        self.eof_sent = False
        self.failed = False
        self.closed = False
        self.draining = False
        self.nursery: trio.Nursery | None = None
        self.observer = observer
        self.requests_from_socket = False
        self.shaper: Shaper | None = None  # the client's bandwidth limit (relay side)
        self._in_done: trio.Event | None = None

    def deliver(self, data: bytes) -> None:
        """Bytes from the peer: to the socket now if it takes them, else to the backlog."""
        if self.closed:
            self.runner.session.consumed(self.sid, len(data))
            return
        self._observe(data, not self.requests_from_socket)
        sock = self.sock
        if sock is not None and not self.backlog and self.shaper is None:
            try:
                n = sock.send(data)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                self._fail(exc)
                return
            if n:
                self.runner.metrics.bytes_out += n
                self.runner.session.consumed(self.sid, n, trio.current_time())
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
                log.info("%s", ex.line(self.runner.log_query))

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
                if self.shaper is not None:
                    n = await _send_shaped(sock, backlog, self.shaper)
                else:
                    await trio.lowlevel.wait_writable(sock)
                    n = send_some(sock, backlog)
                if n:
                    self.backlog_bytes -= n
                    runner.metrics.bytes_out += n
                    runner.session.consumed(self.sid, n, trio.current_time())
                    runner.flush()
            if self.ended:
                self._send_eof()
        except PIPE_ERRORS as exc:
            self._fail(exc)
        finally:
            self.draining = False


async def _send_shaped(sock: socket.socket, backlog: Buffers, shaper: Shaper) -> int:
    """At most SHAPED_SEND bytes of the backlog, once the client's down bucket allows."""
    pause = shaper.down.wait(trio.current_time())
    if pause:
        await trio.sleep(pause)
    await trio.lowlevel.wait_writable(sock)
    first = backlog[0]
    try:
        n = sock.send(first[:SHAPED_SEND])
    except BlockingIOError:
        return 0
    if n == len(first):
        backlog.popleft()
    else:
        backlog[0] = memoryview(first)[n:]
    shaper.down.charge(n, trio.current_time())
    return n


class StreamPipe(_TowardsSocket):
    """One stream <-> one socket; see the module docstring."""

    __slots__ = ("peer", "reset", "_writable")

    def __init__(
        self,
        runner: PipeHost,
        sid: int,
        peer: str,
        observe_http: bool,
        requests_from_socket: bool,
    ) -> None:
        super().__init__(runner, sid, HttpObserver() if observe_http else None)
        self.peer = peer
        self.requests_from_socket = requests_from_socket
        self.reset = False
        self._writable: trio.Event | None = None

    def abort(self) -> None:
        self.reset = True
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def writable(self) -> None:
        if self._writable is not None:
            self._writable.set()

    async def _pump_out(self) -> None:
        """Socket -> stream, until end of file (FIN) or an error (abort)."""
        sock = self.sock
        assert sock is not None
        runner = self.runner
        core = runner.session
        sid = self.sid
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
                if self.shaper is not None:  # the client's limit: pause to pay the bytes back
                    pause = self.shaper.up.charge(len(data), trio.current_time())
                    if pause:
                        await trio.sleep(pause)
                if not ok and core.awaiting_writable(sid):  # flush() may have cleared it
                    self._writable = trio.Event()
                    await self._writable.wait()
                    self._writable = None
        except PIPE_ERRORS as exc:
            self._fail(exc)

    async def _both_ways(self, opener: Opener) -> None:
        if self.reset:
            return
        try:
            self.sock = await opener()
            self.runner.opened(self)  # a reset meanwhile cancels the nursery at once
        except PIPE_ERRORS as exc:
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

    async def run(self, opener: Opener) -> None:
        """Open the socket, then both directions until both ended; abort on error or RST.

        Anything else that ends it early (cancelled: the program stops, its session's
        nursery ends) resets the socket too: a FIN would tell the peer a cut-off transfer
        was complete.
        """
        runner = self.runner
        finished = False  # both directions ended by FIN (or an error / RST, flagged)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    await self._both_ways(opener)
                    finished = True
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
            if self.failed or self.reset or not finished:
                runner.session.reset_stream(self.sid, ErrorCode.CANCEL)
                runner.ring()
                if sock is not None:
                    close_plain(sock, reset=True)
            elif sock is not None:
                close_plain(sock)
