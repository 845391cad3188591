"""Issue 15: the request log is safe to print and the relay's summary tells real uptimes."""

from __future__ import annotations

from trivpn.reverse.httplog import HttpObserver, printable, redact_query
from trivpn.reverse.metrics import Metrics, merged


def _exchange(request: bytes, response: bytes) -> str:
    obs = HttpObserver()
    obs.feed_request(request, 0.0)
    (ex,) = obs.feed_response(response, 0.25)
    return ex.line()


def test_terminal_escapes_from_the_service_are_escaped() -> None:
    """Before: a reason phrase with ESC [31m reached the log as is (h11 lets it through)."""
    line = _exchange(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HTTP/1.1 200 O\x1b[31mK\x1b]0;pwned\x07\r\ncontent-length: 0\r\n\r\n",
    )
    assert "\x1b" not in line and "\x07" not in line
    assert "O\\x1b[31mK\\x1b]0;pwned\\x07" in line
    assert all(c.isprintable() for c in line)


def test_printable_escapes_every_control_character() -> None:
    raw = "".join(chr(c) for c in range(0x20)) + "\x7f\x9b\u2028\\"
    out = printable(raw)
    assert all(c.isprintable() for c in out)
    assert out.endswith("\\x7f\\x9b\\u2028\\\\")


def test_query_strings_are_redacted_unless_asked_for() -> None:
    req = b"GET /login?token=s3cret&u=bob HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = b"HTTP/1.1 302 Found\r\ncontent-length: 0\r\n\r\n"
    obs = HttpObserver()
    obs.feed_request(req, 0.0)
    (ex,) = obs.feed_response(resp, 0.01)
    assert "s3cret" not in ex.line() and "/login?…" in ex.line()
    assert "/login?token=s3cret&u=bob" in ex.line(show_query=True)
    assert redact_query("/plain") == "/plain"


def test_relay_summary_shows_the_connected_time() -> None:
    """Before: a client connected ~2 s was summarised as 0.0 s (the per-client total was
    made when the session ended and its age was shown). Now: the time it was connected."""
    session = Metrics(started=100.0, state="CLOSED")
    session.ended = 102.0
    total = Metrics(state="TOTAL", is_total=True, started=500.0)
    total.add(session)
    live = Metrics(started=200.0)
    view = merged([total, live], now=203.5)
    assert view.uptime() == 2.0 + 3.5
    assert "uptime        5.5 s" in view.summary("client alice", now=999.0)
    assert total.uptime(now=10_000.0) == 2.0  # ended sessions do not keep ageing


def test_relay_exit_summary_uses_the_connected_time() -> None:
    import time

    from trivpn.reverse.relay import Relay, RelayConfig

    relay = Relay(
        RelayConfig(
            host="127.0.0.1", port=0, start_port=41300, end_port=41301, tokens={"a": bytes(16)}
        )
    )
    now = time.time()
    gone = Metrics(started=now - 3.0, state="CLOSED")
    gone.ended = now - 1.0  # connected ~2 s, left a second ago
    relay.totals["alice"] = total = Metrics(state="TOTAL", is_total=True)
    total.add(gone)
    summary = relay.summary()
    assert "client alice" in summary and "uptime        2.0 s" in summary  # before: 0.0 s
