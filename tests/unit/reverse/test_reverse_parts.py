"""Reverse tunnel: frame codec, port leases, backoff, HTTP observer, CLI parsing."""

from __future__ import annotations

import pytest

from trivpn.cli import build_parser
from trivpn.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from trivpn.reverse.frames import (
    HEADER_SIZE,
    PRE_AUTH_MAX_FRAME,
    Flag,
    FrameDecoder,
    FrameType,
    encode,
)
from trivpn.reverse.httplog import HttpObserver
from trivpn.reverse.ports import Backoff, PortAllocator, PortUnavailable
from trivpn.reverse.relay import load_tokens
from trivpn.reverse.service import parse_hostport

# ----------------------------------------------------------------------------- frames


def test_encode_decode_split_anywhere() -> None:
    wire = (
        encode(FrameType.PING, payload=b"12345678")
        + encode(FrameType.DATA, Flag.FIN, 7, b"hello")
        + encode(FrameType.WINDOW, 0, 7, b"\x00\x01\x00\x00")
    )
    for cut in range(len(wire) + 1):
        dec = FrameDecoder(1 << 20)
        frames = dec.feed(wire[:cut]) + dec.feed(wire[cut:])
        assert [(f.type, f.flags, f.stream_id, f.payload) for f in frames] == [
            (FrameType.PING, 0, 0, b"12345678"),
            (FrameType.DATA, Flag.FIN, 7, b"hello"),
            (FrameType.WINDOW, 0, 7, b"\x00\x01\x00\x00"),
        ]
        assert dec.buffered == 0


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (bytes([2, 0x11, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]), "version"),
        (bytes([1, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "unknown frame type"),
        (bytes([1, 0x11, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0]), "flags"),
        (bytes([1, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "stream id 0"),
        (bytes([1, 0x08, 0, 0, 0, 0, 0, 5, 0, 0, 0, 8]), "stream id 5"),
        (bytes([1, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]), "expected 8"),
        (bytes([1, 0x11, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1]), "exceeds the limit of 256"),
    ],
)
def test_decoder_rejects(raw: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        FrameDecoder(PRE_AUTH_MAX_FRAME).feed(raw)


def test_decoder_never_allocates_declared_length_early() -> None:
    dec = FrameDecoder(16 << 20)
    assert dec.feed(bytes([1, 0x11, 0, 0, 0, 0, 0, 1, 0, 0xFF, 0, 0])) == []
    assert dec.buffered == HEADER_SIZE


def test_encode_misuse_is_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        encode(FrameType.DATA, 0, 0, b"x")
    with pytest.raises(LocalProtocolError):
        encode(FrameType.PING, 0, 3, bytes(8))


# ------------------------------------------------------------------------------ ports


A = ("alice", b"a" * 16)
B = ("bob", b"b" * 16)


def test_ports_assigned_lowest_free_and_reused_after_lease() -> None:
    pa = PortAllocator(100, 102, lease=10)
    assert pa.assign(A, 0, 0) == (100, False)
    assert pa.assign(B, 0, 0) == (101, False)
    pa.release(100, A, 5)
    # leased to A: B's second session cannot take it, A gets it back
    assert pa.assign(("carol", b"c" * 16), 0, 6) == (102, False)
    with pytest.raises(PortUnavailable, match="in use or leased"):
        pa.assign(B, 100, 6)
    assert pa.assign(A, 0, 7) == (100, False)
    pa.release(100, A, 8)
    assert pa.assign(B, 100, 18) == (100, False)  # lease ran out: reused


def test_same_client_while_alive_is_a_takeover() -> None:
    pa = PortAllocator(100, 105)
    assert pa.assign(A, 0, 0) == (100, False)
    assert pa.assign(A, 0, 1) == (100, True)


def test_requested_port_rules() -> None:
    pa = PortAllocator(100, 101)
    with pytest.raises(PortUnavailable, match="outside"):
        pa.assign(A, 99, 0)
    assert pa.assign(A, 101, 0) == (101, False)
    assert pa.assign(B, 0, 0) == (100, False)
    with pytest.raises(PortUnavailable, match="all ports"):
        pa.assign(("c", b"c" * 16), 0, 0)


def test_backoff_doubles_to_cap_and_gives_up() -> None:
    b = Backoff(attempts=10, jitter=0.0)
    delays = [b.next_delay(0.5) for _ in range(11)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, None]
    b.reset()
    assert b.next_delay(0.5) == 1
    jittered = Backoff(jitter=0.2)
    assert jittered.next_delay(0.0) == pytest.approx(0.8)
    forever = Backoff(attempts=0, jitter=0.0)
    assert all(forever.next_delay(0.5) is not None for _ in range(100))


# ------------------------------------------------------------------------- HTTP observer


def test_http_observer_keepalive_pipelined_split() -> None:
    obs = HttpObserver()
    req = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    for i in range(0, len(req), 5):
        assert obs.feed_request(req[i : i + 5], 1.0) == []
    resp = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"  # HEAD: no body follows
    )
    seen = []
    for i in range(0, len(resp), 3):
        seen += obs.feed_response(resp[i : i + 3], 1.045)
    assert [(e.method, e.target, e.status) for e in seen] == [
        ("GET", "/a", 200),
        ("POST", "/b", 404),
        ("HEAD", "/c", 200),
    ]
    assert seen[0].line() == "│ HTTP │ ✓ GET /a 200 OK 45ms"
    assert seen[1].line().startswith("│ HTTP │ ✗ POST /b 404 Not Found")


def test_http_observer_turns_off_for_other_protocols() -> None:
    obs = HttpObserver()
    obs.feed_request(b"\x16\x03\x01\x02\x00", 0.0)  # a TLS ClientHello
    assert not obs.active
    obs2 = HttpObserver()
    obs2.feed_request(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 0
    )
    out = obs2.feed_response(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello",
        0.01,
    )
    assert [e.status for e in out] == [101] and not obs2.active
    obs3 = HttpObserver()
    obs3.feed_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0)
    assert obs3.feed_response(b"garbage garbage\r\n\r\n", 0) == [] and not obs3.active


# -------------------------------------------------------------------------------- CLI


def test_cli_parsers_registered() -> None:
    p = build_parser()
    a = p.parse_args(["relay", "--token", "t"])
    assert a.addr == ":9000" and a.start_port == 10000 and a.handler.__name__ == "cmd_relay"
    e = p.parse_args(
        ["expose", "--server", "r:9000", "--local", ":3000", "--token", "t", "--no-reconnect"]
    )
    assert e.no_reconnect and e.remote_port == 0 and e.handler.__name__ == "cmd_expose"
    with pytest.raises(SystemExit):
        p.parse_args(["relay", "--token", "t", "--tokens-file", "f"])  # one or the other


def test_parse_hostport() -> None:
    assert parse_hostport(":9000", "--addr") == ("", 9000)
    assert parse_hostport("[::1]:80", "--addr") == ("::1", 80)
    assert parse_hostport("relay.example:443", "--server") == ("relay.example", 443)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_hostport("nocolon", "--server")
    with pytest.raises(ConfigError, match="port must be"):
        parse_hostport("h:70000", "--server")


def test_tokens_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "tokens"
    f.write_text("# clients\nalice:one\nbob: two \nbare-token\n")
    assert load_tokens(str(f)) == {"alice": b"one", "bob": b"two", "client3": b"bare-token"}
    f.write_text("alice:one\nalice:two\n")
    with pytest.raises(ConfigError, match="twice"):
        load_tokens(str(f))
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(str(tmp_path / "missing"))
