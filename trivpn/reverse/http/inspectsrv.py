"""`expose --inspect`: the inspector's web service and the pipes that feed it (trio).

`Inspector` owns the `History`; `InspectedPipe` (a StreamPipe) feeds both directions of
every stream into an `ExchangeCapture` and hands each finished exchange to `add`, which
also pushes it to every open event stream. The web side is h11 over trio, one task per
browser connection, at most `MAX_CONNECTIONS` of them: `InspectorApp` (inspector.py)
decides, this module only moves bytes — the page, JSON, server-sent events (history
first, then live, a comment every `KEEPALIVE` seconds), and replays, which re-send a
recorded request to the local service on a new connection and record the answer as a
new exchange. A browser too slow to take its events loses its stream (bounded queue)
and reconnects, getting the history again.
"""

from __future__ import annotations

import logging
import time

import h11
import trio

from trivpn.errors import ConfigError
from trivpn.reverse.http.capture import Exchange, ExchangeCapture
from trivpn.reverse.http.inspector import (
    HISTORY,
    History,
    InspectorApp,
    Record,
    ReplayRequest,
    Response,
    replay_bytes,
    sse,
    to_json,
)
from trivpn.reverse.http.inspector_page import CSP
from trivpn.reverse.httplog import MAX_HEAD
from trivpn.reverse.pipe import Opener, PipeHost, StreamPipe

log = logging.getLogger("trivpn.reverse")

MAX_CONNECTIONS = 32
MAX_BODY = 64 * 1024  # of a request to the inspector itself
KEEPALIVE = 15.0
IDLE = 60.0
REPLAY_TIMEOUT = 30.0
MAX_REPLAY_READ = 16 * 1024 * 1024
EVENT_QUEUE = 256
_NET_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError)


class Inspector:
    def __init__(self, local_host: str, local_port: int, limit: int = HISTORY) -> None:
        self.history = History(limit)
        self.local = (local_host, local_port)
        self.port = 0
        self.app = InspectorApp(self.history, 0)
        self._subscribers: set[trio.MemorySendChannel[bytes]] = set()
        self._connections = 0

    def add(self, exchange: Exchange, replay_of: int = 0) -> Record:
        rec = self.history.add(exchange, time.time(), replay_of)
        event = sse(rec)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)
                channel.close()
        return rec

    def pipe_factory(
        self, runner: PipeHost, sid: int, peer: str, observe_http: bool, requests_from_socket: bool
    ) -> StreamPipe:
        return InspectedPipe(self, runner, sid, peer, observe_http, requests_from_socket)

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ConfigError(f"--inspect: cannot listen on {host}:{port}: {exc.strerror}") from None
        self.port = listeners[0].socket.getsockname()[1]
        self.app.port = self.port
        task_status.started(self.port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        if self._connections >= MAX_CONNECTIONS:
            await trio.aclose_forcefully(stream)
            return
        self._connections += 1
        try:
            async with stream:
                await self._serve_http(stream, h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD))
        except (*_NET_ERRORS, trio.TooSlowError) as exc:
            log.debug("inspector connection: %s", exc)
        finally:
            self._connections -= 1

    async def _next(self, stream: trio.SocketStream, conn: h11.Connection) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.fail_after(IDLE):
                conn.receive_data(await stream.receive_some(65536))

    async def _serve_http(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        for _ in range(10_000):  # requests on one keep-alive connection
            request = await self._next(stream, conn)
            if not isinstance(request, h11.Request):
                return
            size = 0
            while not isinstance(ev := await self._next(stream, conn), h11.EndOfMessage):
                if not isinstance(ev, h11.Data) or (size := size + len(ev.data)) > MAX_BODY:
                    return
            reply = self.app.handle(request)
            if isinstance(reply, ReplayRequest):
                reply = await self.replay(reply.record)
            if isinstance(reply, Response):
                await stream.send_all(response_bytes(conn, reply))
            else:
                await self._events(stream, conn)
                return
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _events(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        """Server-sent events: the history, then every new exchange, until the browser leaves."""
        send, receive = trio.open_memory_channel[bytes](EVENT_QUEUE)
        head = h11.Response(
            status_code=200,
            headers=[("content-type", "text/event-stream"), ("cache-control", "no-store")],
        )
        first = conn.send(head) or b""
        backlog = b"".join(sse(r) for r in self.history.records)
        self._subscribers.add(send)
        try:
            await stream.send_all(first + (conn.send(h11.Data(data=backlog)) if backlog else b""))
            async with receive:
                while True:
                    with trio.move_on_after(KEEPALIVE):
                        try:
                            event = await receive.receive()
                        except trio.EndOfChannel:
                            return  # too slow: dropped; the browser reconnects
                        await stream.send_all(conn.send(h11.Data(data=event)) or b"")
                        continue
                    await stream.send_all(conn.send(h11.Data(data=b": keep-alive\n\n")) or b"")
        finally:
            self._subscribers.discard(send)
            send.close()

    async def replay(self, rec: Record) -> Response:
        """Send a recorded request to the local service again; the answer is a new record."""
        response, exchange = await replay(self.local, rec)
        if exchange is not None:
            new = self.add(exchange, replay_of=rec.id)
            log.info("inspector: replayed #%d -> #%d, status %d", rec.id, new.id, exchange.status)
            response = Response(200, to_json({"id": new.id, "status": exchange.status}))
        return response


class InspectedPipe(StreamPipe):
    """A StreamPipe whose traffic also goes, as whole exchanges, to the inspector."""

    __slots__ = ("capture", "inspector")

    def __init__(
        self,
        inspector: Inspector,
        runner: PipeHost,
        sid: int,
        peer: str,
        observe_http: bool,
        requests_from_socket: bool,
    ) -> None:
        super().__init__(runner, sid, peer, observe_http, requests_from_socket)
        self.inspector = inspector
        self.capture = ExchangeCapture(peer)

    def _observe(self, data: bytes, is_request: bool) -> None:
        super()._observe(data, is_request)
        capture = self.capture
        if not capture.active:
            return
        if is_request:
            capture.feed_request(data, trio.current_time())
        else:
            for exchange in capture.feed_response(data, trio.current_time()):
                self.inspector.add(exchange)

    async def run(self, opener: Opener) -> None:
        try:
            await super().run(opener)
        finally:
            for exchange in self.capture.close(trio.current_time()):
                self.inspector.add(exchange)


def response_bytes(conn: h11.Connection, r: Response) -> bytes:
    headers = [
        ("content-type", r.content_type),
        ("content-length", str(len(r.body))),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("content-security-policy", CSP),
    ]
    data = conn.send(h11.Response(status_code=r.status, headers=headers)) or b""
    data += conn.send(h11.Data(data=r.body)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")


async def replay(local: tuple[str, int], rec: Record) -> tuple[Response, Exchange | None]:
    """Re-send `rec`'s request on a new connection; the error reply, or the new exchange."""
    data = replay_bytes(rec.exchange)
    capture = ExchangeCapture(f"replay of #{rec.id}")
    done: list[Exchange] = []
    try:
        with trio.fail_after(REPLAY_TIMEOUT):
            stream = await trio.open_tcp_stream(*local)
            async with stream:
                capture.feed_request(data, trio.current_time())
                await stream.send_all(data)
                total = 0
                while not done and total < MAX_REPLAY_READ:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    total += len(chunk)
                    done = capture.feed_response(chunk, trio.current_time())
    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
        why = "timed out" if isinstance(exc, trio.TooSlowError) else str(exc)
        return Response(502, to_json({"error": f"local service: {why}"})), None
    done = done or capture.close(trio.current_time())
    if not done:
        return Response(502, to_json({"error": "the local service sent no HTTP response"})), None
    return Response(200, b""), done[0]
