"""Whole HTTP exchanges seen in a tunnel stream, for the inspector (pure; h11 parses).

Theory of operation
-------------------
Like httplog.HttpObserver, an `ExchangeCapture` reads *side copies* of both directions of
one stream and never touches the forwarded bytes: an h11 connection in the server role
parses the requests, one in the client role the responses, and every request parsed on
the first is mirrored into the second so it knows which response to expect (HEAD has no
body, and so on). Where the observer keeps a log line, this keeps the whole exchange:
method, target, headers and body of both messages, and times, so the inspector can show
it and send the request again.

Bounds: heads at most `MAX_HEAD` (h11's own limit), body previews `preview` bytes, the
request body kept for replay at most `replay_body` bytes (a larger one is marked not
replayable), at most `MAX_PENDING` pipelined requests waiting for their response. Anything
that is not HTTP/1.x, a protocol switch or a parse error turns the capture off for that
stream. An exchange is complete at the end of its response; `close(now)` hands out the
ones the connection's end cut short (no response, or a body cut off).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import h11

from trivpn.reverse.httplog import MAX_HEAD

PREVIEW = 4096
REPLAY_BODY = 64 * 1024
MAX_PENDING = 16
_ERRORS = (h11.ProtocolError, KeyError, ValueError)


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


@dataclass(slots=True)
class Message:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)  # the first `limit` bytes
    size: int = 0  # all of it

    def add(self, data: bytes, limit: int) -> None:
        room = limit - len(self.body)
        if room > 0:
            self.body += data[:room]
        self.size += len(data)


@dataclass(slots=True)
class Exchange:
    peer: str
    method: str
    target: str
    version: str
    request: Message
    started: float
    status: int = 0  # 0: no response seen
    reason: str = ""
    response: Message | None = None
    responded: float | None = None  # response head
    finished: float | None = None  # end of the response (None: cut short)
    request_done: bool = False

    @property
    def duration(self) -> float:
        end = self.responded if self.responded is not None else self.started
        return max(0.0, end - self.started)


class ExchangeCapture:
    """Feed it copies of both directions of one stream; it returns finished exchanges."""

    __slots__ = ("peer", "preview", "replay_body", "active", "_req", "_resp", "_pending",
                 "_sent", "_started")

    def __init__(self, peer: str, *, preview: int = PREVIEW, replay_body: int = REPLAY_BODY):
        self.peer = peer
        self.preview = preview
        self.replay_body = max(preview, replay_body)
        self.active = True
        self._req = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._resp = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._pending: deque[Exchange] = deque()  # requests without a complete response
        self._sent: Exchange | None = None  # the request h11's request side is reading
        self._started: float | None = None

    def feed_request(self, data: bytes, now: float) -> list[Exchange]:
        if not self.active or not data:
            return []
        if self._started is None:
            self._started = now
        try:
            self._req.receive_data(data)
            self._drain_requests(now)
        except _ERRORS:
            return self._off()
        return []

    def _drain_requests(self, now: float) -> None:
        while self.active:
            ev = self._req.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                if len(self._pending) >= MAX_PENDING:
                    self._off()
                    return
                started = self._started if self._started is not None else now
                self._started = None
                headers = [(_text(k), _text(v)) for k, v in ev.headers.raw_items()]
                ex = Exchange(
                    self.peer,
                    _text(ev.method),
                    _text(ev.target),
                    _text(ev.http_version),
                    Message(headers),
                    started,
                )
                self._pending.append(ex)
                self._sent = ex
                self._resp.send(h11.Request(method=ev.method, target=ev.target, headers=ev.headers))
            elif isinstance(ev, h11.Data):
                if self._sent is not None:
                    self._sent.request.add(ev.data, self.replay_body)
                self._resp.send(h11.Data(data=ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                if self._sent is not None:
                    self._sent.request_done = True
                self._resp.send(h11.EndOfMessage())
                if self._resp.their_state is h11.DONE:  # the response already finished
                    self._next_cycle(now)
                    return
            elif isinstance(ev, h11.ConnectionClosed):
                return
            if (
                self._req.our_state is h11.SWITCHED_PROTOCOL
                or self._req.their_state is h11.MUST_CLOSE
            ):
                return

    def feed_response(self, data: bytes, now: float) -> list[Exchange]:
        if not self.active or not data:
            return []
        done: list[Exchange] = []
        try:
            self._resp.receive_data(data)
            while self.active:
                ev = self._resp.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    break
                if isinstance(ev, h11.InformationalResponse) and ev.status_code != 101:
                    continue  # 100 Continue: the real response follows
                if isinstance(ev, h11.Response | h11.InformationalResponse):
                    if not self._pending:
                        return self._off()
                    ex = self._pending[0]
                    ex.status, ex.reason = ev.status_code, _text(ev.reason)
                    ex.response = Message([(_text(k), _text(v)) for k, v in ev.headers.raw_items()])
                    ex.responded = now
                    if ev.status_code == 101 or (ex.method == "CONNECT" and ev.status_code < 300):
                        done.append(self._pending.popleft())
                        self._off()
                        break
                elif isinstance(ev, h11.Data):
                    if self._pending and self._pending[0].response is not None:
                        self._pending[0].response.add(ev.data, self.preview)
                elif isinstance(ev, h11.EndOfMessage):
                    if self._pending:
                        ex = self._pending.popleft()
                        ex.finished = now
                        done.append(ex)
                    self._next_cycle(now)
                elif isinstance(ev, h11.ConnectionClosed):
                    self.active = False
        except _ERRORS:
            self._off()
        return done

    def close(self, now: float) -> list[Exchange]:
        """The stream ended: the exchanges it cut short (no response, or part of one)."""
        left = list(self._pending)
        self._pending.clear()
        self.active = False
        return left

    def _off(self) -> list[Exchange]:
        self.active = False
        return []

    def _next_cycle(self, now: float) -> None:
        if self._resp.our_state is h11.DONE and self._resp.their_state is h11.DONE:
            self._resp.start_next_cycle()
            if self._req.our_state is h11.SEND_RESPONSE:
                # the request side never "sent" the response; mirror it so it can move on
                self._req.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                self._req.send(h11.EndOfMessage())
            if self._req.our_state is h11.DONE and self._req.their_state is h11.DONE:
                self._req.start_next_cycle()
                self._sent = None
                self._drain_requests(now)
            else:
                self.active = False  # the connection is closing: no more exchanges
