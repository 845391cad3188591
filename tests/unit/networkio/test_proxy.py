"""Proxies as transports: HTTP CONNECT and SOCKS5 cores, the trio driver, profile options.

Core tests feed hand-written proxy replies. Driver tests run a tiny scripted proxy on
loopback inside the test's own trio nursery (no root, nothing leaves 127.0.0.1).
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trivpn.errors import ConfigError, FatalError, RemoteProtocolError
from trivpn.networkio import TransportError
from trivpn.networkio.framing import frame_packets
from trivpn.networkio.proxy import (
    HTTPConnectHandshake,
    ProxiedTCPTransport,
    ProxyAuthRequired,
    ProxyError,
    ProxyRefused,
    Socks5Handshake,
    open_profile_proxy_transport,
    open_proxy_transport,
    proxy_of,
)
from trivpn.profile.profile import HTTPProxyOptions, ProxySpec, parse_profile

# -- HTTP CONNECT core --------------------------------------------------------------------


def _request(hs: HTTPConnectHandshake) -> list[str]:
    raw = hs.data_to_send()
    assert raw.endswith(b"\r\n\r\n")
    assert hs.data_to_send() == b""  # sent once
    return raw[:-4].decode().split("\r\n")


def test_http_request_default() -> None:
    hs = HTTPConnectHandshake("vpn.example.net", 1194)
    assert _request(hs) == ["CONNECT vpn.example.net:1194 HTTP/1.0", "Host: vpn.example.net:1194"]


def test_http_request_options_and_basic_auth() -> None:
    opts = HTTPProxyOptions(
        version="1.1",
        agent="trivpn-test",
        headers=(("X-Trace", "42"), ("X-Whole-Line: yes", None)),
    )
    hs = HTTPConnectHandshake("fd00::1", 443, options=opts, credentials=("alice", "s3cr:t"))
    lines = _request(hs)
    assert lines[0] == "CONNECT [fd00::1]:443 HTTP/1.1"
    assert "X-Trace: 42" in lines and "X-Whole-Line: yes" in lines
    assert "Host: [fd00::1]:443" in lines
    assert "User-Agent: trivpn-test" in lines
    token = base64.b64encode(b"alice:s3cr:t").decode()
    assert f"Proxy-Authorization: Basic {token}" in lines


def test_custom_host_header_replaces_ours() -> None:
    hs = HTTPConnectHandshake("a", 1, options=HTTPProxyOptions(headers=(("Host", "front.example"),)))
    lines = _request(hs)
    assert [ln for ln in lines if ln.lower().startswith("host:")] == ["Host: front.example"]


def test_http_200_done_and_leftover_kept() -> None:
    hs = HTTPConnectHandshake("h", 1)
    reply = b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n\x00\x0e\x38"
    # byte by byte: nothing is decided before the blank line, nothing after it is lost
    for i in range(len(reply)):
        assert not hs.done or i >= reply.index(b"\r\n\r\n") + 4
        hs.receive_data(reply[i : i + 1])
    assert hs.done and hs.status == 200
    assert hs.leftover == b"\x00\x0e\x38"


def test_http_other_2xx_accepted() -> None:
    hs = HTTPConnectHandshake("h", 1)
    hs.receive_data(b"HTTP/1.1 204 OK\r\n\r\n")
    assert hs.done and hs.leftover == b""


def test_http_407_without_credentials() -> None:
    hs = HTTPConnectHandshake("h", 1)
    with pytest.raises(ProxyAuthRequired) as info:
        hs.receive_data(
            b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b'Proxy-Authenticate: Basic realm="tinyproxy"\r\n'
            b"Proxy-Authenticate: NTLM\r\nContent-Length: 0\r\n\r\n"
        )
    assert info.value.schemes == ("Basic", "Ntlm")
    assert not info.value.sent_credentials
    assert "requires authentication" in str(info.value) and "407" in str(info.value)


def test_http_401_from_tinyproxy_is_an_auth_refusal() -> None:
    hs = HTTPConnectHandshake("h", 1, credentials=("alice", "bad"))
    with pytest.raises(ProxyAuthRequired, match="rejected our credentials") as info:
        hs.receive_data(
            b"HTTP/1.0 401 Unauthorized\r\nServer: tinyproxy/1.11.1\r\n"
            b'WWW-Authenticate: Basic realm="Tinyproxy"\r\nConnection: close\r\n\r\n<?xml'
        )
    assert info.value.schemes == ("Basic",) and info.value.code == 401


def test_http_407_with_credentials_means_rejected() -> None:
    hs = HTTPConnectHandshake("h", 1, credentials=("u", "p"))
    with pytest.raises(ProxyAuthRequired, match="rejected our credentials") as info:
        hs.receive_data(b"HTTP/1.0 407 Nope\r\n\r\n")
    assert info.value.sent_credentials


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (b"HTTP/1.0 403 Access violation\r\n\r\n<html>", 403),
        (b"HTTP/1.1 502 Bad Gateway\r\nX: y\r\n\r\n", 502),
        (b"HTTP/1.1 500\r\n\r\n", 500),
    ],
)
def test_http_refusals(reply: bytes, code: int) -> None:
    hs = HTTPConnectHandshake("h", 1)
    with pytest.raises(ProxyRefused) as info:
        hs.receive_data(reply)
    assert info.value.code == code
    assert "refused" in str(info.value) and str(code) in str(info.value)


@pytest.mark.parametrize(
    "reply",
    [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.0 2000 OK\r\n\r\n", b"HTTP/1.0\r\n\r\n", b"\x05\x00\r\n\r\n",
     b"HTTP/1.0 OK 200\r\n\r\n"],
)
def test_http_malformed_status_line(reply: bytes) -> None:
    with pytest.raises(ProxyError, match="malformed status line"):
        HTTPConnectHandshake("h", 1).receive_data(reply)


def test_http_endless_headers_refused() -> None:
    hs = HTTPConnectHandshake("h", 1)
    with pytest.raises(ProxyError, match="exceed"):
        for _ in range(100):
            hs.receive_data(b"X-Filler: " + b"a" * 500 + b"\r\n")


@given(st.binary(max_size=300))
def test_http_core_raises_only_remote_protocol_errors(data: bytes) -> None:
    hs = HTTPConnectHandshake("h", 1)
    try:
        hs.receive_data(data)
    except RemoteProtocolError:
        return
    assert hs.done == (b"\r\n\r\n" in data)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"options": HTTPProxyOptions(agent="a\r\nX-Evil: 1")},
        {"options": HTTPProxyOptions(headers=(("X", "b\nc"),))},
        {"options": HTTPProxyOptions(version="2")},
        {"credentials": ("a:b", "c")},
        {"credentials": ("", "c")},
    ],
)
def test_http_bad_settings_are_config_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        HTTPConnectHandshake("h", 1, **kwargs)  # type: ignore[arg-type]


# -- SOCKS5 core --------------------------------------------------------------------------


def test_socks_no_auth_domain_name() -> None:
    hs = Socks5Handshake("vpn.example.net", 1194)
    assert hs.data_to_send() == b"\x05\x01\x00"
    hs.receive_data(b"\x05\x00")
    name = b"vpn.example.net"
    assert hs.data_to_send() == b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x04\xaa"
    hs.receive_data(b"\x05\x00\x00\x01\x0a\x00\x00\x01\x9c\x40")
    assert hs.done and hs.leftover == b"" and hs.method == 0


def test_socks_names_it_cannot_send_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"'bü\.\.example' is not a valid host name"):
        Socks5Handshake("bü..example", 1194)  # IDNA refuses an empty label
    with pytest.raises(ConfigError, match="too long for SOCKS5"):
        Socks5Handshake("a" * 256, 1194)


@pytest.mark.parametrize(
    ("host", "addr"),
    [("10.201.0.1", b"\x01\x0a\xc9\x00\x01"), ("fd00:201::1", b"\x04" + socket.inet_pton(socket.AF_INET6, "fd00:201::1"))],
)
def test_socks_ip_literals(host: str, addr: bytes) -> None:
    hs = Socks5Handshake(host, 443)
    hs.data_to_send()
    hs.receive_data(b"\x05\x00")
    assert hs.data_to_send() == b"\x05\x01\x00" + addr + b"\x01\xbb"


def test_socks_userpass_split_replies_and_leftover() -> None:
    hs = Socks5Handshake("h", 1, credentials=("bob", "pw"))
    assert hs.data_to_send() == b"\x05\x02\x00\x02"
    hs.receive_data(b"\x05")
    assert hs.data_to_send() == b""
    hs.receive_data(b"\x02")
    assert hs.data_to_send() == b"\x01\x03bob\x02pw"
    hs.receive_data(b"\x01\x00\x05\x00")  # auth ok, then the first bytes of the reply
    assert hs.data_to_send() == b"\x05\x01\x00\x03\x01h\x00\x01"
    assert not hs.done
    # a reply with a domain-name bound address, then OpenVPN bytes behind it
    hs.receive_data(b"\x00\x03\x04abcd\x00\x50\x00\x2a")
    assert hs.done and hs.leftover == b"\x00\x2a"


def test_socks_ipv6_bound_address_reply() -> None:
    hs = Socks5Handshake("h", 1)
    hs.data_to_send()
    hs.receive_data(b"\x05\x00")
    hs.receive_data(b"\x05\x00\x00\x04" + bytes(16))
    assert not hs.done
    hs.receive_data(b"\x00\x01")
    assert hs.done


def test_socks_auth_required_without_credentials() -> None:
    hs = Socks5Handshake("h", 1)
    hs.data_to_send()
    with pytest.raises(ProxyAuthRequired, match="requires authentication") as info:
        hs.receive_data(b"\x05\xff")
    assert not info.value.sent_credentials


def test_socks_bad_credentials() -> None:
    hs = Socks5Handshake("h", 1, credentials=("bob", "wrong"))
    hs.receive_data(b"\x05\x02")
    with pytest.raises(ProxyAuthRequired, match="rejected our username/password") as info:
        hs.receive_data(b"\x01\x01")
    assert info.value.sent_credentials


@pytest.mark.parametrize(("code", "text"), [(1, "general"), (2, "ruleset"), (5, "connection refused"), (0x42, "unknown")])
def test_socks_refusals(code: int, text: str) -> None:
    hs = Socks5Handshake("h", 1)
    hs.receive_data(b"\x05\x00")
    with pytest.raises(ProxyRefused, match=text) as info:
        hs.receive_data(bytes([5, code, 0, 1]) + bytes(6))
    assert info.value.code == code


@pytest.mark.parametrize(
    ("replies", "match"),
    [
        ([b"\x04\x5a"], "not a SOCKS5 proxy"),
        ([b"\x05\x02"], "did not offer"),  # username/password chosen but never offered
        ([b"\x05\x00", b"\x05\x00\x00\x09"], "unknown address type"),
        ([b"\x05\x00", b"\x04\x00\x00\x01"], "version 4"),
        ([b"HTTP/1.0 400 Bad Request\r\n"], "not a SOCKS5 proxy"),
    ],
)
def test_socks_bad_replies(replies: list[bytes], match: str) -> None:
    hs = Socks5Handshake("h", 1)
    with pytest.raises(ProxyError, match=match):
        for r in replies:
            hs.receive_data(r)


@given(st.binary(max_size=300), st.booleans())
def test_socks_core_raises_only_remote_protocol_errors(data: bytes, auth: bool) -> None:
    hs = Socks5Handshake("h", 1, credentials=("u", "p") if auth else None)
    try:
        hs.receive_data(data)
    except RemoteProtocolError:
        pass


def test_socks_bad_settings() -> None:
    with pytest.raises(ConfigError, match="255"):
        Socks5Handshake("h", 1, credentials=("u" * 256, "p"))
    with pytest.raises(ConfigError, match="too long"):
        Socks5Handshake("a" * 256, 1)
    with pytest.raises(ConfigError):
        Socks5Handshake("h", 0)


# -- the trio driver against scripted loopback proxies -------------------------------------

Script = Callable[[trio.SocketStream, int], Awaitable[None]]


async def _read_until(stream: trio.SocketStream, marker: bytes, limit: int = 65536) -> bytes:
    buf = b""
    while marker not in buf:
        chunk = await stream.receive_some(4096)
        assert chunk, "client closed early"
        buf += chunk
        assert len(buf) < limit
    return buf


async def _serve(nursery: trio.Nursery, script: Script) -> int:
    """A fake proxy on 127.0.0.1 (its port); connection number i runs `script(stream, i)`."""
    listeners = await nursery.start(partial(trio.serve_tcp, _counting(script), 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def _counting(script: Script) -> Callable[[trio.SocketStream], Awaitable[None]]:
    count = [0]

    async def handler(stream: trio.SocketStream) -> None:
        count[0] += 1
        async with stream:
            await script(stream, count[0])

    return handler


async def _collect(transport: ProxiedTCPTransport, n: int) -> list[bytes]:
    got: list[bytes] = []
    with trio.fail_after(5):
        while len(got) < n:
            got.extend(await transport.recv_batch())
    return got


async def test_driver_http_auto_then_basic_and_stream_intact() -> None:
    seen: list[bytes] = []

    async def script(stream: trio.SocketStream, index: int) -> None:
        req = await _read_until(stream, b"\r\n\r\n")
        seen.append(req)
        if index == 1:
            await stream.send_all(
                b'HTTP/1.0 407 Auth\r\nProxy-Authenticate: Basic realm="x"\r\n\r\n'
            )
            return
        # success, immediately followed by two framed "server" packets
        await stream.send_all(b"HTTP/1.0 200 OK\r\n\r\n" + frame_packets([b"\x40reset", b"\x20hello"]))
        echo = await stream.receive_some(4096)
        await stream.send_all(echo)

    asked: list[str] = []

    async def prompt(where: str) -> tuple[str, str]:
        asked.append(where)
        return "alice", "pw"

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, script)
        spec = ProxySpec("127.0.0.1", port, "auto")
        reports: list[str] = []
        t = await open_proxy_transport(
            "http", spec, "vpn.example.net", 1194, prompt=prompt, report=reports.append
        )
        try:
            assert isinstance(t, ProxiedTCPTransport)
            assert t.target == ("vpn.example.net", 1194)
            assert t.endpoint.address == "127.0.0.1" and t.endpoint.port == port
            assert "vpn.example.net:1194 via http proxy 127.0.0.1" in t.describe()
            assert await _collect(t, 2) == [b"\x40reset", b"\x20hello"]
            await t.send_batch([b"\x38ack"])
            assert await _collect(t, 1) == [b"\x38ack"]
        finally:
            t.close()
        nursery.cancel_scope.cancel()
    assert len(seen) == 2
    assert b"Proxy-Authorization" not in seen[0]
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"alice:pw") in seen[1]
    assert asked and "127.0.0.1" in asked[0]
    assert any("Basic" in r for r in reports)


async def test_driver_http_none_and_407_is_fatal_with_hint() -> None:
    async def script(stream: trio.SocketStream, index: int) -> None:
        await _read_until(stream, b"\r\n\r\n")
        await stream.send_all(b"HTTP/1.0 407 Auth\r\nProxy-Authenticate: Basic\r\n\r\n")

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, script)
        with pytest.raises(FatalError, match="requires authentication.*auth file"):
            await open_proxy_transport("http", ProxySpec("127.0.0.1", port), "h", 1)
        nursery.cancel_scope.cancel()


async def test_driver_http_auto_nct_refuses_cleartext() -> None:
    async def script(stream: trio.SocketStream, index: int) -> None:
        await _read_until(stream, b"\r\n\r\n")
        await stream.send_all(b"HTTP/1.0 407 Auth\r\nProxy-Authenticate: Basic\r\n\r\n")

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, script)
        with pytest.raises(FatalError, match="auto-nct"):
            await open_proxy_transport(
                "http", ProxySpec("127.0.0.1", port, "auto-nct", ("u", "p")), "h", 1
            )
        nursery.cancel_scope.cancel()


async def test_driver_http_refusal_is_transport_error() -> None:
    async def script(stream: trio.SocketStream, index: int) -> None:
        await _read_until(stream, b"\r\n\r\n")
        await stream.send_all(b"HTTP/1.0 403 Forbidden\r\n\r\n")

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, script)
        with pytest.raises(TransportError, match="403 Forbidden"):
            await open_proxy_transport("http", ProxySpec("127.0.0.1", port), "h", 1)
        nursery.cancel_scope.cancel()


async def test_driver_proxy_closing_early_and_silent_proxy() -> None:
    async def closes(stream: trio.SocketStream, index: int) -> None:
        await stream.receive_some(100)

    async def silent(stream: trio.SocketStream, index: int) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, closes)
        with pytest.raises(TransportError, match="closed the connection"):
            await open_proxy_transport("socks5", ProxySpec("127.0.0.1", port), "h", 1)
        port2 = await _serve(nursery, silent)
        with pytest.raises(TransportError, match="in time"):
            await open_proxy_transport(
                "socks5", ProxySpec("127.0.0.1", port2), "h", 1, connect_timeout=0.3
            )
        nursery.cancel_scope.cancel()


async def test_driver_unreachable_proxy() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransportError, match="refused"):
        await open_proxy_transport("http", ProxySpec("127.0.0.1", port), "h", 1)


async def test_driver_socks_userpass_domain_and_leftover() -> None:
    got: list[bytes] = []

    async def script(stream: trio.SocketStream, index: int) -> None:
        got.append(await stream.receive_some(64))  # 05 02 00 02
        await stream.send_all(b"\x05\x02")
        got.append(await stream.receive_some(64))  # 01 len user len pass
        await stream.send_all(b"\x01\x00")
        got.append(await stream.receive_some(300))
        await stream.send_all(b"\x05\x00\x00\x01" + bytes(6) + frame_packets([b"\x40srv"]))
        await stream.receive_some(10)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, script)
        t = await open_proxy_transport(
            "socks5", ProxySpec("127.0.0.1", port, "userpass", ("bob", "pw")), "vpn.test", 1194
        )
        try:
            assert await _collect(t, 1) == [b"\x40srv"]
        finally:
            t.close()
        nursery.cancel_scope.cancel()
    assert got[0] == b"\x05\x02\x00\x02"
    assert got[1] == b"\x01\x03bob\x02pw"
    assert got[2] == b"\x05\x01\x00\x03\x08vpn.test\x04\xaa"


async def test_driver_socks_missing_credentials_is_fatal() -> None:
    async def script(stream: trio.SocketStream, index: int) -> None:
        await stream.receive_some(64)
        await stream.send_all(b"\x05\xff")

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, script)
        with pytest.raises(FatalError, match="socks-proxy host port FILE"):
            await open_proxy_transport("socks5", ProxySpec("127.0.0.1", port), "h", 1)
        nursery.cancel_scope.cancel()


async def test_driver_ask_without_prompt_is_fatal() -> None:
    with pytest.raises(FatalError, match="username and password"):
        await open_proxy_transport("socks5", ProxySpec("127.0.0.1", 9, "userpass", None, True), "h", 1)


async def test_driver_refuses_udp_and_unknown_kind() -> None:
    with pytest.raises(ConfigError, match="TCP only"):
        await open_proxy_transport("http", ProxySpec("127.0.0.1", 9), "h", 1, proto="udp")
    with pytest.raises(ConfigError, match="unknown proxy kind"):
        await open_proxy_transport("socks4", ProxySpec("127.0.0.1", 9), "h", 1)


async def test_open_profile_proxy_transport_uses_profile_settings() -> None:
    seen: list[bytes] = []

    async def script(stream: trio.SocketStream, index: int) -> None:
        seen.append(await _read_until(stream, b"\r\n\r\n"))
        await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\n")
        await stream.receive_some(10)

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, script)
        profile = _parse(
            f"proto tcp\nhttp-proxy 127.0.0.1 {port}\nhttp-proxy-option VERSION 1.1\n"
            "http-proxy-option AGENT trivpn/1\n"
        )
        t = await open_profile_proxy_transport(profile, "10.201.0.1", 1194, "tcp")
        t.close()
        nursery.cancel_scope.cancel()
    assert seen[0].startswith(b"CONNECT 10.201.0.1:1194 HTTP/1.1\r\n")
    assert b"User-Agent: trivpn/1\r\n" in seen[0]


# -- profile options ----------------------------------------------------------------------

BASE = "client\ndev tun\nremote vpn.example.net 1194\n<ca>\n-----BEGIN CERTIFICATE-----\nx\n</ca>\n"


def _parse(extra: str, base_dir: Path | None = None) -> object:
    return parse_profile(BASE + extra, base_dir=base_dir)


def test_profile_without_proxy() -> None:
    p = _parse("")
    assert p.http_proxy is None and p.socks_proxy is None  # type: ignore[attr-defined]
    assert proxy_of(p) is None  # type: ignore[arg-type]


def test_profile_http_proxy_forms(tmp_path: Path) -> None:
    (tmp_path / "up.txt").write_text("alice\nsecret\n")
    (tmp_path / "user-only.txt").write_text("alice\n")
    cases = {
        "http-proxy proxy.lan 3128": ProxySpec("proxy.lan", 3128, "none"),
        "http-proxy proxy.lan 3128 up.txt": ProxySpec("proxy.lan", 3128, "basic", ("alice", "secret")),
        "http-proxy proxy.lan 3128 up.txt basic": ProxySpec("proxy.lan", 3128, "basic", ("alice", "secret")),
        "http-proxy proxy.lan 3128 up.txt none": ProxySpec("proxy.lan", 3128, "none"),
        "http-proxy proxy.lan 3128 auto": ProxySpec("proxy.lan", 3128, "auto"),
        "http-proxy proxy.lan 3128 auto-nct": ProxySpec("proxy.lan", 3128, "auto-nct"),
        "http-proxy proxy.lan 3128 stdin": ProxySpec("proxy.lan", 3128, "basic", None, True),
        "http-proxy proxy.lan 3128 user-only.txt": ProxySpec("proxy.lan", 3128, "basic", None, True),
    }
    for line, spec in cases.items():
        p = _parse(f"proto tcp\n{line}\n", tmp_path)
        assert p.http_proxy == spec, line  # type: ignore[attr-defined]
        assert proxy_of(p) == ("http", spec)  # type: ignore[arg-type]


def test_profile_http_proxy_options_and_inline_user_pass() -> None:
    p = _parse(
        "proto tcp-client\nhttp-proxy 10.0.0.1 8080 auto\n"
        "http-proxy-option VERSION 1.1\nhttp-proxy-option AGENT Mozilla/5.0\n"
        "http-proxy-option CUSTOM-HEADER X-A one\nhttp-proxy-option EXT1 X-B:two\n"
        "<http-proxy-user-pass>\nbob\npw\n</http-proxy-user-pass>\n"
    )
    assert p.http_proxy == ProxySpec("10.0.0.1", 8080, "auto", ("bob", "pw"))  # type: ignore[attr-defined]
    assert p.http_proxy_options == HTTPProxyOptions(  # type: ignore[attr-defined]
        "1.1", "Mozilla/5.0", (("X-A", "one"), ("X-B:two", None))
    )


def test_profile_socks_proxy_forms(tmp_path: Path) -> None:
    (tmp_path / "socks.txt").write_text("carol\npw\n")
    p = _parse("proto tcp\nsocks-proxy 127.0.0.1\n")
    assert p.socks_proxy == ProxySpec("127.0.0.1", 1080)  # type: ignore[attr-defined]
    p = _parse("proto tcp\nsocks-proxy socks.lan 9050 socks.txt\n", tmp_path)
    assert p.socks_proxy == ProxySpec("socks.lan", 9050, "userpass", ("carol", "pw"))  # type: ignore[attr-defined]
    assert proxy_of(p) == ("socks5", p.socks_proxy)  # type: ignore[arg-type, attr-defined]


def test_profile_proxy_in_connection_block() -> None:
    p = _parse(
        "<connection>\nremote vpn.example.net 443 tcp\nhttp-proxy 10.0.0.1 3128\n</connection>\n"
    )
    assert p.http_proxy == ProxySpec("10.0.0.1", 3128)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("http-proxy 10.0.0.1 3128\n", "TCP only.*proto tcp"),  # default proto is udp
        ("proto udp\nsocks-proxy 10.0.0.1\n", "TCP only"),
        ("proto tcp\nremote other 1194 udp\nhttp-proxy p 1\n", "TCP only"),
        ("proto tcp\nhttp-proxy p 1\nsocks-proxy p\n", "cannot be used together"),
        ("proto tcp\nhttp-proxy p\n", "host and port"),
        ("proto tcp\nhttp-proxy p 0\n", "out of range"),
        ("proto tcp\nhttp-proxy p x\n", "not a number"),
        ("proto tcp\nhttp-proxy p 1 f ntlm\n", "'ntlm' is not supported"),
        ("proto tcp\nhttp-proxy p 1 auto basic\n", "no auth method"),
        ("proto tcp\nhttp-proxy p 1 missing-file\n", "cannot read"),
        ("proto tcp\nhttp-proxy-option VERSION 1.1\n", "no 'http-proxy'"),
        ("proto tcp\nhttp-proxy p 1\nhttp-proxy-option VERSION 2\n", "1.0 or 1.1"),
        ("proto tcp\nhttp-proxy p 1\nhttp-proxy-option FOO bar\n", "unknown or malformed"),
        ("proto tcp\nhttp-proxy p 1\nhttp-proxy-option AGENT\n", "2 to 3 arguments"),
        ("proto tcp\nsocks-proxy p 1 2 3\n", "1 to 3 arguments"),
    ],
)
def test_profile_proxy_errors(extra: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        _parse(extra, tmp_path)
    assert "\n" not in str(info.value)


async def test_given_proxy_endpoints_are_used_without_a_second_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client resolved the proxy's name (for the kill switch, maybe from an earlier
    answer while the tunnel's DNS is dead): those addresses are connected to, and the name is
    not looked up again (that lookup failed during a reconnect)."""
    from trivpn.networkio import proxy as proxy_module
    from trivpn.networkio.transport import Endpoint, ResolveError

    async def no_lookup(host: str, port: int, proto: str) -> list[Endpoint]:
        raise ResolveError(f"cannot resolve {host!r}: Temporary failure in name resolution")

    monkeypatch.setattr(proxy_module, "resolve", no_lookup)

    async def script(stream: trio.SocketStream, index: int) -> None:
        await _read_until(stream, b"\r\n\r\n")
        await stream.send_all(b"HTTP/1.0 200 OK\r\n\r\n" + frame_packets([b"\x40reset"]))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        port = await _serve(nursery, script)
        spec = ProxySpec("proxy.unresolvable.test", port)
        known = [Endpoint("proxy.unresolvable.test", port, "tcp", socket.AF_INET, ("127.0.0.1", port))]
        with pytest.raises(TransportError, match="Temporary failure"):
            await open_proxy_transport("http", spec, "vpn.example.net", 1194)
        t = await open_proxy_transport("http", spec, "vpn.example.net", 1194, proxy_endpoints=known)
        try:
            assert t.endpoint.address == "127.0.0.1"
            assert await _collect(t, 1) == [b"\x40reset"]
        finally:
            t.close()
        nursery.cancel_scope.cancel()
