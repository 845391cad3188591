"""The inspector's pure cores: ExchangeCapture (whole exchanges from side copies), History
(bounded), InspectorApp (routes, loopback Host, replay guard) and the escaping of what it
shows; plus the service over loopback without a browser (SSE, replay, limits)."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator

import h11
import pytest
import trio

from trivpn.reverse.http.capture import PREVIEW, ExchangeCapture
from trivpn.reverse.http.inspector import (
    History,
    InspectorApp,
    ReplayRequest,
    Response,
    StartEvents,
    replay_bytes,
    sse,
    to_json,
)
from trivpn.reverse.http.inspector_page import PAGE, SCRIPT
from trivpn.reverse.http.inspectsrv import Inspector

REQ = b"POST /x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-A: <b>\r\n\r\nhello"
RESP = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"


def test_capture_whole_exchange_split_anywhere() -> None:
    for step in (1, 3, 1000):
        cap = ExchangeCapture("peer:1")
        for i in range(0, len(REQ), step):
            cap.feed_request(REQ[i : i + step], 1.0)
        done = []
        for i in range(0, len(RESP), step):
            done += cap.feed_response(RESP[i : i + step], 1.5)
        assert len(done) == 1
        ex = done[0]
        assert (ex.method, ex.target, ex.status, ex.reason) == ("POST", "/x?a=1", 201, "Created")
        assert ("X-A", "<b>") in ex.request.headers and bytes(ex.request.body) == b"hello"
        assert ex.response is not None and bytes(ex.response.body) == b"ok"
        assert ex.duration == pytest.approx(0.5) and ex.request_done


def test_capture_keep_alive_pipelined_and_bounded_bodies() -> None:
    cap = ExchangeCapture("p", preview=16, replay_body=32)
    big = b"x" * 100
    cap.feed_request(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n", 0.0)
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + big
    done = cap.feed_response(resp + resp, 1.0)
    assert [e.target for e in done] == ["/1", "/2"]
    assert all(e.response is not None and len(e.response.body) == 16 for e in done)
    assert done[0].response is not None and done[0].response.size == 100
    cap.feed_request(b"PUT /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + big, 2.0)
    (cut,) = cap.close(3.0)  # no response yet: handed out as cut short
    assert cut.status == 0 and len(cut.request.body) == 32 and cut.request.size == 100


def test_capture_turns_off_for_non_http() -> None:
    cap = ExchangeCapture("p")
    cap.feed_request(b"\x16\x03\x01\x00\x10binary", 0.0)
    assert not cap.active
    assert cap.feed_response(RESP, 1.0) == [] and cap.close(1.0) == []


def _exchange(target: str = "/x?a=1") -> tuple[History, int]:
    cap = ExchangeCapture("peer")
    cap.feed_request(REQ.replace(b"/x?a=1", target.encode()), 0.0)
    (ex,) = cap.feed_response(RESP, 0.1)
    history = History(limit=3)
    return history, history.add(ex, 1e9).id


def test_history_is_bounded() -> None:
    history, _ = _exchange()
    ex = history.records[0].exchange
    for _ in range(10):
        history.add(ex, 0.0)
    assert [r.id for r in history.records] == [9, 10, 11]
    assert history.get(1) is None and history.get(11) is not None


def test_shown_data_is_inert() -> None:
    hostile = "/<script>alert(1)</script>&<img>"
    history, rid = _exchange(hostile)
    rec = history.get(rid)
    assert rec is not None
    for blob in (to_json(History.describe(rec)), sse(rec)):
        assert b"<" not in blob and b">" not in blob and b"&" not in blob.replace(b"\n", b"")
    described = json.loads(to_json(History.describe(rec)))
    assert described["target"] == hostile and described["query"] == ""
    assert described["request"]["headers"][2] == ["X-A", "<b>"]
    # the page is static and builds the DOM from text only
    assert "innerHTML" not in SCRIPT and "insertAdjacentHTML" not in SCRIPT
    assert "document.write" not in SCRIPT and "<script>" not in PAGE


def _req(target: bytes, host: bytes = b"127.0.0.1:4040", method: bytes = b"GET",
         extra: list[tuple[bytes, bytes]] | None = None) -> h11.Request:
    return h11.Request(method=method, target=target, headers=[(b"host", host), *(extra or [])])


def test_app_routes_and_guards() -> None:
    history, rid = _exchange()
    app = InspectorApp(history, 4040)
    page = app.handle(_req(b"/"))
    assert isinstance(page, Response) and page.content_type.startswith("text/html")
    assert isinstance(app.handle(_req(b"/api/events", b"localhost:4040")), StartEvents)
    listed = app.handle(_req(b"/api/requests", b"[::1]:4040"))
    assert isinstance(listed, Response) and json.loads(listed.body)[0]["id"] == rid
    # DNS rebinding: another Host is refused
    for host in (b"evil.example:4040", b"127.0.0.1:9999", b""):
        got = app.handle(_req(b"/api/requests", host))
        assert isinstance(got, Response) and got.status == 421
    ok_header = [(b"x-trivpn-inspector", b"replay")]
    replay = f"/api/replay/{rid}".encode()
    assert isinstance(app.handle(_req(replay, method=b"POST", extra=ok_header)), ReplayRequest)
    # a cross-site form cannot replay: no custom header, or a foreign Origin
    for method, extra, status in (
        (b"POST", [], 403),
        (b"POST", [*ok_header, (b"origin", b"http://evil.example")], 403),
        (b"GET", ok_header, 405),
    ):
        got = app.handle(_req(replay, method=method, extra=extra))
        assert isinstance(got, Response) and got.status == status
    for bad in (b"/api/replay/999", b"/api/replay/x", b"/api/replay/" + b"9" * 40,
                b"/api/replay/%C2%B2"):
        got = app.handle(_req(bad, method=b"POST", extra=ok_header))
        assert isinstance(got, Response) and got.status == 404


def test_replay_bytes_rebuild_the_request() -> None:
    history, rid = _exchange()
    rec = history.get(rid)
    assert rec is not None
    data = replay_bytes(rec.exchange)
    assert data.startswith(b"POST /x?a=1 HTTP/1.1\r\n") and data.endswith(b"\r\n\r\nhello")
    assert b"content-length: 5" in data.lower() and b"connection: close" in data.lower()


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def _get(port: int, target: str, method: str = "GET", headers: str = "") -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}"
            "Connection: close\r\n\r\n".encode()
        )
        out = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                out += chunk
    return out


async def test_service_events_and_replay_over_loopback(nursery: trio.Nursery) -> None:
    hits: list[bytes] = []

    async def local(stream: trio.SocketStream) -> None:
        async with stream:
            hits.append(await stream.receive_some(65536))
            await stream.send_all(RESP)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, local, 0, host="127.0.0.1"))
    inspector = Inspector("127.0.0.1", listeners[0].socket.getsockname()[1])
    port = await nursery.start(inspector.serve, "127.0.0.1", 0)
    history, _ = _exchange()
    inspector.add(history.records[0].exchange)

    events = await trio.open_tcp_stream("127.0.0.1", port)
    await events.send_all(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    got = b""
    with trio.fail_after(10):
        while b"id: 1\n" not in got:  # the history comes first
            got += await events.receive_some(65536)
    assert b"text/event-stream" in got

    answer = await _get(port, "/api/replay/1", "POST", "X-Trivpn-Inspector: replay\r\n")
    assert answer.startswith(b"HTTP/1.1 200") and b'"status":201' in answer
    assert hits and hits[0].startswith(b"POST /x?a=1 HTTP/1.1")
    with trio.fail_after(10):
        while b"id: 2\n" not in got:  # the replay, live
            got += await events.receive_some(65536)
    assert b'"replay_of":1' in got
    await events.aclose()
    refused = await _get(port, "/api/replay/1", "POST")
    assert refused.startswith(b"HTTP/1.1 403") and len(hits) == 1
    page = await _get(port, "/")
    assert b"content-security-policy: default-src 'none'" in page.lower()
    assert len(PAGE) < PREVIEW * 4
