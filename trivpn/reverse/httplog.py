"""Passive HTTP/1.1 observer for request logging (pure; h11 does the parsing).

The tunnel forwards bytes untouched; this module only reads a *side copy* of each
direction. Two h11 connections mirror the exchange: one in the server role parses what the
public client sends (requests), one in the client role parses what the service answers
(responses). Every request parsed on the first is replayed into the second, so the second
knows which response to expect (HEAD has no body, and so on). After each complete
exchange both start the next cycle, so every request on a keep-alive connection is seen,
including pipelined ones, split across any number of reads.

Anything that is not HTTP/1.x, a protocol switch (WebSocket, CONNECT) or a parse error
simply turns the observer off for that connection: logging is best-effort by design and
can never alter, delay or drop a byte of the stream.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import h11

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


class HttpObserver:
    """Feed it copies of both directions; it returns the exchanges it completed."""

    __slots__ = ("_req", "_resp", "_pending", "_req_started", "active", "_checked")

    def __init__(self) -> None:
        self._req = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._resp = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._pending: deque[tuple[str, str, float]] = deque()
        self._req_started: float | None = None
        self.active = True
        self._checked = False

    def _off(self) -> list[HttpExchange]:
        self.active = False
        self._pending.clear()
        return []

    def feed_request(self, data: bytes, now: float) -> list[HttpExchange]:
        if not self.active or not data:
            return []
        if not self._checked:
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
        if self._req_started is None:
            self._req_started = now
        try:
            self._req.receive_data(data)
            self._drain_requests(now)
        except (h11.ProtocolError, KeyError, ValueError):
            return self._off()
        return []

    def _drain_requests(self, now: float) -> None:
        while self.active:
            ev = self._req.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Request):
                started = self._req_started if self._req_started is not None else now
                self._req_started = None
                method = ev.method.decode("ascii", "replace")
                target = ev.target.decode("ascii", "replace")
                self._pending.append((method, target, started))
                self._resp.send(h11.Request(method=ev.method, target=ev.target, headers=ev.headers))
            elif isinstance(ev, h11.Data):
                self._resp.send(h11.Data(data=ev.data))
            elif isinstance(ev, h11.EndOfMessage):
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

    def feed_response(self, data: bytes, now: float) -> list[HttpExchange]:
        if not self.active or not data:
            return []
        out: list[HttpExchange] = []
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
                        return self._off()
                    method, target, started = self._pending.popleft()
                    out.append(
                        HttpExchange(
                            method,
                            target,
                            ev.status_code,
                            ev.reason.decode("ascii", "replace"),
                            max(0.0, now - started),
                        )
                    )
                    if ev.status_code == 101 or (method == "CONNECT" and ev.status_code < 300):
                        self.active = False
                        break
                elif isinstance(ev, h11.EndOfMessage):
                    self._next_cycle(now)
                elif isinstance(ev, h11.ConnectionClosed):
                    self.active = False
        except (h11.ProtocolError, KeyError, ValueError):
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
                self._drain_requests(now)
            else:
                self.active = False  # connection closing: no more exchanges to see
        elif self._resp.our_state is not h11.DONE:
            pass  # response finished before the request body: wait for the request side
