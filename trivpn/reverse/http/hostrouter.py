"""The first request head of a public HTTP connection, routed by its Host header (pure).

Theory of operation
-------------------
The relay's `--http-addr` listener serves every named tunnel on one port. For each public
connection a `HeadReader` reads bytes until h11 has parsed the first request head, then
says where the connection goes: `Route(name, preface)` — the label in front of the relay's
domain and every byte read so far, which the service forwards untouched as the first bytes
of a tunnel stream — or `Reject(status, response)`, a complete error response to send
before closing. Only the first request decides: the rest of the connection, keep-alive
requests included, is spliced to the same tunnel as plain bytes.

Bounds, because the listener is on the public internet: the head may be at most
`max_head` bytes (h11 refuses more with 431) and must be complete within `timeout`
seconds of the connection's start, however slowly it trickles in (slowloris); the service
waits until `deadline` and then asks `handle_timer`, which answers 408.
"""

from __future__ import annotations

import html
from typing import TypeVar

import h11

from trivpn.records import dataclass
from trivpn.reverse.http.names import NameUnavailable, check_label

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 10.0
_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(slots=True, frozen=True)
class Route:
    name: str  # the subdomain label
    host: str  # the Host header as sent (lower case, no port)
    preface: bytes  # everything read so far: forward it first


@dataclass(slots=True, frozen=True)
class Reject:
    status: int
    reason: str  # for the log
    response: bytes  # a complete HTTP response; empty when there is no one to tell


def printable(text: str, limit: int = 253) -> str:
    """Peer text made safe for one log line or page: no control characters, bounded."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def host_of(header: bytes) -> str:
    """The host part of a Host header: no port, lower case, no trailing dot."""
    value = header.decode("ascii", "replace").strip().lower()
    if value.startswith("["):  # an IPv6 literal never names a tunnel
        return value.partition("]")[0] + "]"
    return value.rpartition(":")[0].rstrip(".") if ":" in value else value.rstrip(".")


def name_for_host(host: str, domain: str) -> str | None:
    """'api.tunnels.example.net' under 'tunnels.example.net' -> 'api'; anything else None."""
    suffix = "." + domain.lower().strip(".")
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    try:
        return check_label(label)
    except NameUnavailable:
        return None  # empty, nested (a.b.domain) or not a DNS label


def error_response(status: int, message: str) -> bytes:
    """A small self-contained HTML error page; `message` is escaped here."""
    reason = _REASONS.get(status, "Error")
    body = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{status} {reason}</title></head><body>"
        f"<h1>{status} {reason}</h1><p>{html.escape(printable(message))}</p>"
        "<hr><p>trivpn relay</p></body></html>\n"
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "Cache-Control: no-store\r\n\r\n"
    ).encode()
    return head + body


def not_found(host: str) -> Reject:
    return Reject(404, f"no tunnel for {printable(host)}", error_response(
        404, f"No tunnel is serving {host}. Check the address, or start `trivpn expose`."
    ))


def offline(host: str) -> Reject:
    return Reject(503, f"tunnel {printable(host)} is reconnecting", error_response(
        503, f"The tunnel for {host} is reconnecting; try again in a few seconds."
    ))


_D = TypeVar("_D", Route, Reject)


class HeadReader:
    """One public connection until its first request head says where it goes."""

    __slots__ = ("domain", "deadline", "max_head", "_h11", "_raw", "_done")

    def __init__(
        self, domain: str, now: float, *, max_head: int = MAX_HEAD, timeout: float = HEAD_TIMEOUT
    ) -> None:
        self.domain = domain.lower().strip(".")
        self.deadline = now + timeout
        self.max_head = max_head
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._raw = bytearray()
        self._done = False

    def receive_data(self, data: bytes, now: float) -> Route | Reject | None:
        """Bytes from the public peer (b"" = it closed); None until the head is complete."""
        if self._done:
            raise RuntimeError("HeadReader already decided")
        if now >= self.deadline:
            return self._decide(self._timeout())
        if not data:
            return self._decide(Reject(400, "closed before the request head", b""))
        self._raw += data
        try:
            self._h11.receive_data(data)
            event = self._h11.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in _REASONS else 400
            return self._decide(Reject(status, f"bad request head: {exc}", error_response(
                status, "The request head is malformed or too large."
            )))
        if event is h11.NEED_DATA:
            if len(self._raw) > self.max_head * 2:  # h11 bounds its buffer; this is ours
                return self._decide(Reject(431, "request head too large", error_response(
                    431, "The request head is too large."
                )))
            return None
        if not isinstance(event, h11.Request):
            return self._decide(Reject(400, "no request", error_response(400, "Bad request.")))
        raw_host = dict(event.headers).get(b"host")
        if raw_host is None:
            return self._decide(Reject(400, "no Host header", error_response(
                400, "A Host header naming the tunnel is required."
            )))
        host = host_of(raw_host)
        name = name_for_host(host, self.domain)
        if name is None:
            return self._decide(not_found(host))
        return self._decide(Route(name, host, bytes(self._raw)))

    def handle_timer(self, now: float) -> Reject | None:
        if self._done or now < self.deadline:
            return None
        return self._decide(self._timeout())

    def _timeout(self) -> Reject:
        return Reject(408, "request head not complete in time", error_response(
            408, "The request head did not arrive in time."
        ))

    def _decide(self, decision: _D) -> _D:
        self._done = True
        self._raw = bytearray()
        return decision
