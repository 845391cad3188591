"""Whole HTTP exchanges seen in a tunnel stream, for the inspector (pure; h11 parses).

Theory of operation
-------------------
Like httplog.HttpObserver, an `ExchangeCapture` is an `httplog.HttpPairing`: it reads
*side copies* of both directions of one stream and never touches the forwarded bytes; an
h11 connection in the server role parses the requests, one in the client role the
responses, and every request parsed on the first is mirrored into the second so it knows
which response to expect (HEAD has no body, and so on). Where the observer keeps a log
line, this keeps the whole exchange: method, target, headers and body of both messages,
and times, so the inspector can show it and send the request again.

Bounds: heads at most `MAX_HEAD` (h11's own limit), body previews `preview` bytes, the
request body kept for replay at most `replay_body` bytes (a larger one is marked not
replayable), at most `MAX_PENDING` pipelined requests waiting for their response. Anything
that is not HTTP/1.x, a protocol switch or a parse error turns the capture off for that
stream. An exchange is complete at the end of its response; `close(now)` hands out the
ones the connection's end cut short (no response, or a body cut off).
"""

from __future__ import annotations

from dataclasses import field

import h11

from trivpn.records import dataclass
from trivpn.reverse.httplog import HttpPairing

PREVIEW = 4096
REPLAY_BODY = 64 * 1024
MAX_PENDING = 16


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


class ExchangeCapture(HttpPairing[Exchange, Exchange]):
    """Feed it copies of both directions of one stream; it returns finished exchanges."""

    __slots__ = ("peer", "preview", "replay_body")

    def __init__(self, peer: str, *, preview: int = PREVIEW, replay_body: int = REPLAY_BODY):
        super().__init__(max_pending=MAX_PENDING)
        self.peer = peer
        self.preview = preview
        self.replay_body = max(preview, replay_body)

    def close(self, now: float) -> list[Exchange]:
        """The stream ended: the exchanges it cut short (no response, or part of one)."""
        left = [ex for ex, _method in self._pending]
        self._pending.clear()
        self.active = False
        return left

    def _request(self, ev: h11.Request, started: float) -> Exchange:
        headers = [(_text(k), _text(v)) for k, v in ev.headers.raw_items()]
        return Exchange(
            self.peer,
            _text(ev.method),
            _text(ev.target),
            _text(ev.http_version),
            Message(headers),
            started,
        )

    def _request_data(self, item: Exchange, data: bytes) -> None:
        item.request.add(data, self.replay_body)

    def _request_end(self, item: Exchange) -> None:
        item.request_done = True

    def _response(
        self, item: Exchange, ev: h11.Response | h11.InformationalResponse, now: float
    ) -> None:
        item.status, item.reason = ev.status_code, _text(ev.reason)
        item.response = Message([(_text(k), _text(v)) for k, v in ev.headers.raw_items()])
        item.responded = now

    def _response_data(self, item: Exchange, data: bytes) -> None:
        if item.response is not None:
            item.response.add(data, self.preview)

    def _done(self, item: Exchange, finished: float | None) -> Exchange:
        item.finished = finished
        return item
