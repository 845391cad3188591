"""The inspector's state and HTTP API (pure; the trio service is inspectsrv.py).

Theory of operation
-------------------
`History` keeps the last `limit` exchanges (capture.Exchange) an expose saw, each with an
id, and turns them into JSON for the page. `InspectorApp.handle(request, body)` answers
one parsed request (h11.Request) with a `Reply` — a complete response, the start of the
server-sent-event stream, or a replay to perform — and never does I/O itself.

What it shows is local by design: headers, query strings and body previews of real
traffic. So the service listens on loopback only, and this core refuses requests whose
Host is not a loopback name (a DNS-rebinding page cannot read it) and replays unless they
carry the `X-Trivpn-Inspector` header, which a cross-site page cannot send without a CORS
preflight that is never granted (a link or form elsewhere cannot replay requests). The
page builds its DOM with textContent only, and every JSON document escapes <, > and & as
\\u escapes: no byte of a request is ever markup.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from urllib.parse import urlsplit

import h11

from trivpn.records import dataclass
from trivpn.reverse.http.capture import Exchange
from trivpn.reverse.http.inspector_page import PAGE, SCRIPT, STYLE

HISTORY = 100
REPLAY_HEADER = "x-trivpn-inspector"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


@dataclass(slots=True, frozen=True)
class Record:
    id: int
    exchange: Exchange
    at: float  # wall-clock time, for display
    replay_of: int = 0


def to_json(obj: object) -> bytes:
    """JSON that is inert inside HTML, too (no <, >, & characters at all)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


class History:
    def __init__(self, limit: int = HISTORY) -> None:
        self.records: deque[Record] = deque(maxlen=limit)
        self._next = 1

    def add(self, exchange: Exchange, at: float, replay_of: int = 0) -> Record:
        rec = Record(self._next, exchange, at, replay_of)
        self._next += 1
        self.records.append(rec)
        return rec

    def get(self, rid: int) -> Record | None:
        for rec in self.records:
            if rec.id == rid:
                return rec
        return None

    @staticmethod
    def describe(rec: Record) -> dict[str, object]:
        ex = rec.exchange
        split = urlsplit(ex.target)
        req, resp = ex.request, ex.response
        return {
            "id": rec.id,
            "replay_of": rec.replay_of,
            "at": rec.at,
            "peer": ex.peer,
            "method": ex.method,
            "target": ex.target,
            "path": split.path or ex.target,
            "query": split.query,
            "version": ex.version,
            "status": ex.status,
            "reason": ex.reason,
            "duration_ms": round(ex.duration * 1000, 1),
            "complete": ex.finished is not None,
            "replayable": replayable(ex),
            "request": _message(req.headers, bytes(req.body), req.size),
            "response": _message(resp.headers, bytes(resp.body), resp.size) if resp else None,
        }


def _message(headers: Iterable[tuple[str, str]], body: bytes, size: int) -> dict[str, object]:
    from trivpn.reverse.http.capture import PREVIEW

    return {
        "headers": [list(h) for h in headers],
        "body": body[:PREVIEW].decode("utf-8", "replace"),
        "size": size,
        "truncated": size > min(len(body), PREVIEW),
    }


def replayable(ex: Exchange) -> bool:
    """Only a request we hold whole can be sent again."""
    return ex.request_done and ex.request.size == len(ex.request.body)


@dataclass(slots=True, frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass(slots=True, frozen=True)
class StartEvents:
    """Open the server-sent-event stream (then `sse(record)` per new exchange)."""


@dataclass(slots=True, frozen=True)
class ReplayRequest:
    record: Record


Reply = Response | StartEvents | ReplayRequest


def sse(rec: Record) -> bytes:
    return b"id: %d\nevent: exchange\ndata: " % rec.id + to_json(History.describe(rec)) + b"\n\n"


def _error(status: int, message: str) -> Response:
    return Response(status, to_json({"error": message}))


class InspectorApp:
    def __init__(self, history: History, port: int) -> None:
        self.history = history
        self.port = port

    def _local_host(self, value: str) -> bool:
        host, _, port = value.rpartition(":")
        return host in _LOOPBACK_NAMES and port == str(self.port)

    def handle(self, request: h11.Request) -> Reply:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        if not self._local_host(headers.get("host", "")):
            return _error(421, "the inspector answers only to its loopback address")
        origin = headers.get("origin")
        if origin is not None and not self._local_host(urlsplit(origin).netloc):
            return _error(403, "cross-origin request refused")
        method = request.method.decode("ascii", "replace")
        path = urlsplit(request.target.decode("ascii", "replace")).path
        if method == "GET" and path == "/":
            return Response(200, PAGE.encode(), "text/html; charset=utf-8")
        if method == "GET" and path == "/app.js":
            return Response(200, SCRIPT.encode(), "text/javascript; charset=utf-8")
        if method == "GET" and path == "/app.css":
            return Response(200, STYLE.encode(), "text/css; charset=utf-8")
        if method == "GET" and path == "/api/requests":
            return Response(200, to_json([History.describe(r) for r in self.history.records]))
        if method == "GET" and path == "/api/events":
            return StartEvents()
        if path.startswith("/api/replay/"):
            if method != "POST":
                return _error(405, "replay is a POST")
            if REPLAY_HEADER not in headers:
                return _error(403, f"replay needs the {REPLAY_HEADER} header")
            rid = path.rpartition("/")[2]
            rec = self.history.get(int(rid)) if rid.isascii() and rid.isdigit() and len(rid) < 12 else None
            if rec is None:
                return _error(404, "no such request in the history")
            if not replayable(rec.exchange):
                return _error(409, "the request body was too large to keep; cannot replay")
            return ReplayRequest(rec)
        return _error(404, "not found")


def replay_bytes(ex: Exchange) -> bytes:
    """The recorded request again, on its own connection (Connection: close)."""
    skip = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade"}
    headers = [(k, v) for k, v in ex.request.headers if k.lower() not in skip]
    body = bytes(ex.request.body)
    if body or ex.method in ("POST", "PUT", "PATCH"):
        headers.append(("content-length", str(len(body))))
    headers.append(("connection", "close"))
    conn = h11.Connection(h11.CLIENT)
    out = conn.send(h11.Request(method=ex.method, target=ex.target, headers=headers))
    assert out is not None
    if body:
        out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out
