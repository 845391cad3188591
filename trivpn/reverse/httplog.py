"""Passive HTTP/1.1 observer for request logging (pure; h11 does the parsing).

The tunnel forwards bytes untouched; this module only reads a *side copy* of each
direction. Two h11 connections mirror the exchange: one in the server role parses what the
public client sends (requests), one in the client role parses what the service answers
(responses). Every request parsed on the first is replayed into the second, so the second
knows which response to expect (HEAD has no body, and so on). After each complete
exchange both start the next cycle, so every request on a keep-alive connection is seen,
including pipelined ones, split across any number of reads. That pairing is
`HttpPairing`; `HttpObserver` keeps a log line of each exchange, the inspector's
`http.capture.ExchangeCapture` the whole exchange.

Anything that is not HTTP/1.x, a protocol switch (WebSocket, CONNECT) or a parse error
simply turns the observer off for that connection: logging is best-effort by design and
can never alter, delay or drop a byte of the stream.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

import h11

from trivpn.records import dataclass

_METHOD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_")
#: h11 buffers at most this much of an incomplete head; bounds the observer's memory.
MAX_HEAD = 16 * 1024


def printable(text: str) -> str:
    """`text` safe for a terminal: control characters (ESC, CR, newline, DEL, C1, ...)
    and backslashes become visible escapes, so a peer cannot forge or colour log lines."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif c.isprintable():
            out.append(c)
        else:
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def redact_query(target: str) -> str:
    """The request target without its query string (tokens and ids often travel there)."""
    path, sep, _ = target.partition("?")
    return f"{path}?…" if sep else path


@dataclass(slots=True, frozen=True)
class HttpExchange:
    method: str
    target: str  # as received (untrusted): escape before printing, see `line`
    status: int
    reason: str
    latency: float  # seconds from the first byte of the request to the response head

    def line(self, show_query: bool = False) -> str:
        """One log line; the query string is redacted unless `show_query` (--log-query)."""
        mark = "✓" if self.status < 400 else "✗"
        target = self.target if show_query else redact_query(self.target)
        reason = f" {printable(self.reason)}" if self.reason else ""
        return (
            f"│ HTTP │ {mark} {printable(self.method)} {printable(target)} "
            f"{self.status}{reason} {self.latency * 1000:.0f}ms"
        )


T = TypeVar("T")  # what a subclass keeps of a request waiting for its response
R = TypeVar("R")  # what `feed_response` hands out

_ERRORS = (h11.ProtocolError, KeyError, ValueError)


class HttpPairing(Generic[T, R]):
    """Pairs each request of one HTTP/1.x stream with its response, from side copies of
    both directions (module docstring). What is kept of an exchange is up to a subclass:
    the hooks below see its parts, `_response` and `_done` may hand out a result. Shared
    by `HttpObserver` (log lines) and the inspector's `http.capture.ExchangeCapture`."""

    __slots__ = ("_req", "_resp", "_pending", "_sent", "_started", "_max_pending", "active")

    def __init__(self, max_pending: int | None = None) -> None:
        """`max_pending`: turn off beyond that many pipelined requests without a response."""
        self._req = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._resp = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        #: requests without a complete response, oldest first, with their method
        self._pending: deque[tuple[T, bytes]] = deque()
        self._sent: T | None = None  # the request h11's request side is reading
        self._started: float | None = None  # first byte of the next request
        self._max_pending = max_pending
        self.active = True

    # -- hooks ---------------------------------------------------------------------------

    def _request(self, ev: h11.Request, started: float) -> T:
        """A request head; what to keep of it until its response."""
        raise NotImplementedError

    def _request_data(self, item: T, data: bytes) -> None:
        """Part of the request body."""

    def _request_end(self, item: T) -> None:
        """The request is complete."""

    def _response(
        self, item: T, ev: h11.Response | h11.InformationalResponse, now: float
    ) -> R | None:
        """The response head (a 101 switch included)."""
        return None

    def _response_data(self, item: T, data: bytes) -> None:
        """Part of the response body."""

    def _done(self, item: T, finished: float | None) -> R | None:
        """The exchange leaves the pairing: its response ended at `finished`, or (None) the
        stream switched protocols."""
        return None

    # -- feeding -------------------------------------------------------------------------

    def _off(self) -> list[R]:
        self.active = False
        return []

    def feed_request(self, data: bytes, now: float) -> list[R]:
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
                if self._max_pending is not None and len(self._pending) >= self._max_pending:
                    self._off()
                    return
                started = self._started if self._started is not None else now
                self._started = None
                item = self._request(ev, started)
                self._pending.append((item, ev.method))
                self._sent = item
                self._resp.send(h11.Request(method=ev.method, target=ev.target, headers=ev.headers))
            elif isinstance(ev, h11.Data):
                if self._sent is not None:
                    self._request_data(self._sent, ev.data)
                self._resp.send(h11.Data(data=ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                if self._sent is not None:
                    self._request_end(self._sent)
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

    def feed_response(self, data: bytes, now: float) -> list[R]:
        if not self.active or not data:
            return []
        out: list[R] = []
        try:
            self._resp.receive_data(data)
            while self.active:
                ev = self._resp.next_event()
                if ev is h11.NEED_DATA or ev is h11.PAUSED:
                    break
                if isinstance(ev, h11.InformationalResponse) and ev.status_code != 101:
                    continue  # 100 Continue and friends: the real response follows
                if isinstance(ev, h11.Response | h11.InformationalResponse):
                    if not self._pending:
                        return self._off()  # a response nobody asked for: not HTTP we follow
                    item, method = self._pending[0]
                    _keep(out, self._response(item, ev, now))
                    if ev.status_code == 101 or (method == b"CONNECT" and ev.status_code < 300):
                        self._pending.popleft()
                        _keep(out, self._done(item, None))
                        self._off()
                        break
                elif isinstance(ev, h11.Data):
                    if self._pending:
                        self._response_data(self._pending[0][0], ev.data)
                elif isinstance(ev, h11.EndOfMessage):
                    if self._pending:
                        item, _method = self._pending.popleft()
                        _keep(out, self._done(item, now))
                    self._next_cycle(now)
                elif isinstance(ev, h11.ConnectionClosed):
                    self.active = False
        except _ERRORS:
            self._off()
        return out

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
                self.active = False  # connection closing: no more exchanges to see
        # else the response finished before the request body: wait for the request side


def _keep(out: list[R], result: R | None) -> None:
    if result is not None:
        out.append(result)


class HttpObserver(HttpPairing[tuple[str, str, float], HttpExchange]):
    """Feed it copies of both directions; it returns the exchanges it completed (one per
    response head)."""

    __slots__ = ("_checked",)

    def __init__(self) -> None:
        super().__init__()
        self._checked = False

    def _off(self) -> list[HttpExchange]:
        self._pending.clear()
        return super()._off()

    def feed_request(self, data: bytes, now: float) -> list[HttpExchange]:
        if self.active and data and not self._checked:
            # cheap early exit for non-HTTP protocols: a method token must come first
            head = data[:16]
            token = head.split(b" ", 1)[0]
            if (
                not token
                or not all(c in _METHOD_CHARS for c in token)
                or (b" " not in head and len(head) == 16)
            ):
                return self._off()
            self._checked = True
        return super().feed_request(data, now)

    def _request(self, ev: h11.Request, started: float) -> tuple[str, str, float]:
        return ev.method.decode("ascii", "replace"), ev.target.decode("ascii", "replace"), started

    def _response(
        self,
        item: tuple[str, str, float],
        ev: h11.Response | h11.InformationalResponse,
        now: float,
    ) -> HttpExchange:
        method, target, started = item
        reason = ev.reason.decode("ascii", "replace")
        return HttpExchange(method, target, ev.status_code, reason, max(0.0, now - started))
