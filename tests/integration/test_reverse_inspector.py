"""`expose --inspect` in a real headless browser (Debian's chromium; loopback, no root).

A request made through the tunnel appears on the inspector page without a reload (server-
sent events), hostile request bytes stay text (no XSS), and clicking Replay reaches the
local service again (counted at the service). Under CI=true a missing chromium fails.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio
from helpers.chromium import find_chromium, headless_chromium
from helpers.reverse_http import (
    DOMAIN,
    HOST,
    http_get,
    start_expose,
    start_relay,
    start_service,
    wait_until,
)

from trivpn.reverse.http.inspectsrv import Inspector

XSS_PATH = "/<img/src=x/onerror=window.__pwned=1>?token=s3cret&q=<b>"
XSS_HEADER = b"X-Evil: <script>window.__pwned=2</script>\r\n"


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_inspector_page_live_update_and_replay_in_chromium(nursery: trio.Nursery) -> None:
    find_chromium()  # fails under CI=true, skips loudly elsewhere
    relay = await start_relay(nursery)
    assert relay.router is not None
    svc = await start_service(nursery, "api")
    inspector = Inspector(HOST, svc.port)
    iport = await nursery.start(inspector.serve, HOST, 0)
    expose = await start_expose(nursery, relay, svc.port, "api")
    expose.pipe_factory = inspector.pipe_factory
    host = f"api.{DOMAIN}"

    async with headless_chromium() as browser:
        await browser.open(f"http://{HOST}:{iport}/")
        await browser.wait_for("document.getElementById('state').textContent === 'live'")
        await browser.evaluate("window.__marker = 42; true")
        rows = "document.querySelectorAll('#requests tbody tr').length"
        assert await browser.evaluate(rows) == 0

        # a request through the tunnel shows up without a reload
        got = await http_get(relay.router.http_port, host, XSS_PATH, extra=XSS_HEADER)
        assert got.startswith(b"HTTP/1.1 200")
        await browser.wait_for(f"{rows} === 1")
        assert await browser.evaluate("window.__marker") == 42  # same document: no reload
        cells = await browser.evaluate(
            "[...document.querySelectorAll('#requests tbody tr td')].map(td => td.textContent)"
        )
        assert cells[2:5] == ["GET", XSS_PATH, "200"], cells

        # details: headers, the query string (shown here, locally), all as text
        await browser.evaluate("document.querySelector('#requests tbody tr').click(); true")
        detail = await browser.wait_for("document.getElementById('detail').textContent")
        assert "<script>window.__pwned=2</script>" in detail
        assert "s3cret" in detail and f"hello from api {XSS_PATH}" in detail
        assert await browser.evaluate("typeof window.__pwned") == "undefined"
        assert await browser.evaluate("document.querySelectorAll('#detail script, #detail img, "
                                      "#requests img, #requests b').length") == 0

        # replay: the local service gets the request again, and the page a new row
        assert len(svc.requests) == 1
        await browser.evaluate("document.getElementById('replay-1').click(); true")
        await wait_until(lambda: len(svc.requests) == 2)
        await browser.wait_for(f"{rows} === 2")
        await browser.wait_for("document.getElementById('note').textContent.startsWith("
                               "'replayed #1: 200')")
        assert svc.requests[1].target == svc.requests[0].target
        assert dict(svc.requests[1].headers)[b"x-evil"] == b"<script>window.__pwned=2</script>"
        replay_row = await browser.evaluate(
            "document.querySelector('#requests tbody tr').className"
        )
        assert replay_row == "replay"
        assert await browser.evaluate("typeof window.__pwned") == "undefined"

    # the history through the JSON API: the replay points at its original
    stream = await trio.open_tcp_stream(HOST, iport)
    async with stream:
        await stream.send_all(
            f"GET /api/requests HTTP/1.1\r\nHost: 127.0.0.1:{iport}\r\nConnection: close\r\n\r\n"
            .encode()
        )
        raw = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"<" not in body  # JSON inert in HTML too
    listed = json.loads(body)
    assert [(r["id"], r["replay_of"]) for r in listed] == [(1, 0), (2, 1)]
    assert listed[0]["query"] == "token=s3cret&q=<b>"
