"""The pure cores of name routing: names (leases), hostrouter (Host), sni (ClientHello),
and the named bind in the handshake (wire compatibility both ways)."""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import ssl

import pytest
import trio

from trivpn.cli import build_parser
from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.reverse.cli import _named, cmd_expose, cmd_relay
from trivpn.reverse.events import BindRequested, Bound
from trivpn.reverse.frames import FrameType, encode
from trivpn.reverse.http.hostrouter import HeadReader, Reject, Route, host_of, name_for_host
from trivpn.reverse.http.names import (
    ROUTE_HTTP,
    ROUTE_TLS,
    NameLeases,
    NameUnavailable,
    check_label,
)
from trivpn.reverse.http.sni import (
    MAX_RECORDS,
    SniError,
    SniReader,
    alert,
    client_hello,
    server_name,
)
from trivpn.reverse.session import Session, SessionConfig, State

_spec = importlib.util.spec_from_file_location(
    "fuzz_reverse_routing", pathlib.Path(__file__).parents[3] / "fuzz" / "fuzz_reverse_routing.py"
)
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

D = "tunnels.example.net"
A, B = ("alice", b"1" * 16), ("bob", b"2" * 16)

# ----------------------------------------------------------------------------- names


def test_labels() -> None:
    assert check_label("api-2") == "api-2"
    for bad in ("", "-a", "a-", "a.b", "A", "a_b", "x" * 64, "é"):
        with pytest.raises(NameUnavailable):
            check_label(bad)


def test_name_lease_one_holder_and_grace() -> None:
    names = NameLeases(lease=60)
    assert names.assign(A, "api", 0) is False
    with pytest.raises(NameUnavailable, match="in use or leased"):
        names.assign(B, "api", 1)
    assert names.assign(A, "api", 2) is True  # same client while still holding: takeover
    names.release("api", A, 10)
    assert names.leased("api", 69)
    with pytest.raises(NameUnavailable):
        names.assign(B, "api", 69)  # still within A's lease
    assert names.assign(A, "api", 50) is False  # A is back within the lease
    names.release("api", A, 100)
    assert not names.leased("api", 160)
    assert names.assign(B, "api", 160) is False  # expired: anyone


def test_a_client_holds_one_name() -> None:
    names = NameLeases()
    names.assign(A, "one", 0)
    names.assign(A, "two", 0)
    assert not names.leased("one", 0) and names.leased("two", 0) and len(names) == 1


# ------------------------------------------------------------------------- hostrouter


def test_host_to_name() -> None:
    assert host_of(b"API.tunnels.example.net.:8080") == "api.tunnels.example.net"
    assert host_of(b"[::1]:80") == "[::1]"
    assert name_for_host("api.tunnels.example.net", D) == "api"
    for host in (D, "a.b." + D, "api.example.net", "apitunnels.example.net", "-x." + D, "[::1]"):
        assert name_for_host(host, D) is None, host


def _head(text: bytes, reader: HeadReader | None = None, step: int = 1) -> Route | Reject | None:
    reader = reader or HeadReader(D, 0.0)
    for i in range(0, len(text), step):
        got = reader.receive_data(text[i : i + step], 0.1)
        if got is not None:
            return got
    return None


def test_head_routed_byte_by_byte_and_forwarded_whole() -> None:
    head = b"GET /x?q=1 HTTP/1.1\r\nHost: Api.Tunnels.Example.Net:8080\r\n\r\nbody..."
    got = _head(head)
    assert isinstance(got, Route)
    assert (got.name, got.host) == ("api", "api.tunnels.example.net")
    assert got.preface == head[: len(head) - len(b"body...")]  # decided at the head's end
    got = _head(head, step=len(head))
    assert isinstance(got, Route) and got.preface == head  # what was read goes on


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: nobody.example.org\r\n\r\n", 404),
        (b"GET / HTTP/1.0\r\n\r\n", 400),  # no Host
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # h11 refuses two
        (b"GET / HTTP/1.1\r\nHost: x<script>." + D.encode() + b"\r\n\r\n", 404),
    ],
)
def test_head_rejects(head: bytes, status: int) -> None:
    got = _head(head, step=7)
    assert isinstance(got, Reject) and got.status == status
    assert got.response.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"<script>" not in got.response


def test_head_size_and_time_bounds() -> None:
    reader = HeadReader(D, 0.0, max_head=1024)
    got = _head(b"GET / HTTP/1.1\r\nX: " + b"a" * 5000, reader, step=100)
    assert isinstance(got, Reject) and got.status == 431
    reader = HeadReader(D, 0.0, timeout=5.0)
    assert reader.receive_data(b"GET / HTTP/1.1\r\n", 1.0) is None
    assert reader.handle_timer(4.9) is None
    late = reader.handle_timer(5.0)
    assert isinstance(late, Reject) and late.status == 408
    reader = HeadReader(D, 0.0, timeout=5.0)
    late = reader.receive_data(b"X", 6.0)  # bytes after the deadline count for nothing
    assert isinstance(late, Reject) and late.status == 408
    eof = HeadReader(D, 0.0).receive_data(b"", 0.0)
    assert isinstance(eof, Reject) and eof.response == b""


# -------------------------------------------------------------------------------- SNI


@pytest.mark.parametrize(
    "version", [None, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"]
)
def test_sni_of_real_client_hellos(version: ssl.TLSVersion | None) -> None:
    hello = fuzz.real_hello(f"API.{D}", version)
    body = client_hello(hello)
    assert isinstance(body, bytes) and server_name(body) == f"api.{D}"
    assert server_name(client_hello(fuzz.real_hello(None))) is None  # type: ignore[arg-type]
    split = fuzz.two_records(hello)
    assert server_name(client_hello(split)) == f"api.{D}"  # type: ignore[arg-type]


def test_every_truncation_asks_for_more_and_never_raises() -> None:
    for hello in (fuzz.real_hello(f"api.{D}"), fuzz.two_records(fuzz.real_hello(f"api.{D}"))):
        for n in range(len(hello)):
            need = client_hello(hello[:n])
            assert isinstance(need, int) and n < need <= len(hello)


def test_sni_reader_routes_and_rejects() -> None:
    hello = fuzz.real_hello(f"api.{D}")
    reader = SniReader(D, 0.0)
    got = None
    for i in range(0, len(hello), 50):
        got = reader.receive_data(hello[i : i + 50], 0.1)
    assert isinstance(got, Route) and got.name == "api" and got.preface == hello
    for name in ("example.com", None, f"a.b.{D}"):
        got = SniReader(D, 0.0).receive_data(fuzz.real_hello(name), 0.1)
        assert isinstance(got, Reject) and got.response == alert(112)  # unrecognized_name
    got = SniReader(D, 0.0).receive_data(b"GET / HTTP/1.1\r\n", 0.1)
    assert isinstance(got, Reject) and got.response == alert(50)  # decode_error


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x40\x01",  # record over 2^14
        b"\x16\x02\x00\x00\x04\x01\x00\x00\x00",  # SSL 2 version
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # not a ClientHello
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # a 16 MiB hello
        b"\x16\x03\x01\x00\x01\x01" * (MAX_RECORDS + 1),  # one byte per record
    ],
)
def test_hostile_record_layer(data: bytes) -> None:
    with pytest.raises(SniError):
        client_hello(data)


def test_hostile_hello_bodies() -> None:
    body = client_hello(fuzz.real_hello(f"api.{D}"))
    assert isinstance(body, bytes)
    for n in range(len(body)):  # every truncation of the body: SniError or a clean answer
        try:
            server_name(body[:n])
        except SniError:
            pass
    # a duplicated server_name extension is refused
    ext = b"\x00\x00\x00\x08\x00\x06\x00\x00\x03abc"
    dup = bytes(34) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    dup += (2 * len(ext)).to_bytes(2, "big") + ext * 2
    with pytest.raises(SniError, match="two server_name"):
        server_name(dup)


# ---------------------------------------------------------------------- named bind


def _pair(name: str = "api", routes: int = ROUTE_HTTP) -> tuple[Session, Session]:
    cfg = SessionConfig()
    relay = Session("relay", 0.0, cfg, tokens={"a": b"k" * 16})
    client = Session(
        "client", 0.0, cfg, token=b"k" * 16, client_id=b"c" * 16, requested_name=name, routes=routes
    )
    for _ in range(3):
        relay.receive_data(b"".join(client.data_to_send(0.0)), 0.0)
        client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)
    return relay, client


def test_named_bind_round_trip() -> None:
    relay, client = _pair("api", ROUTE_HTTP | ROUTE_TLS)
    req = [e for e in relay.events() if isinstance(e, BindRequested)]
    assert req == [BindRequested(0, "api", ROUTE_HTTP | ROUTE_TLS)]
    relay.accept_bind(0, 60, host=f"api.{D}", http_port=8080, https_port=8443)
    client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)
    assert client.state is State.BOUND and relay.state is State.BOUND
    assert [e for e in client.events() if isinstance(e, Bound)] == [
        Bound(0, 60, f"api.{D}", 8080, 8443)
    ]


def test_plain_bind_is_unchanged_on_the_wire() -> None:
    relay, client = _pair("", 0)
    assert [e for e in relay.events() if isinstance(e, BindRequested)] == [BindRequested(0)]
    relay.accept_bind(10000, 60, host="ignored")
    wire = b"".join(relay.data_to_send(0.0))
    assert wire == encode(FrameType.BIND_OK, payload=b"\x27\x10\x00\x00\x00\x3c")
    client.receive_data(wire, 0.0)
    assert client.port == 10000


def test_each_side_refuses_the_other_form() -> None:
    relay, client = _pair("api")
    relay.events()
    # a plain BIND_OK to a named bind
    with pytest.raises(RemoteProtocolError, match="named BIND_OK"):
        client.receive_data(encode(FrameType.BIND_OK, payload=b"\x27\x10\x00\x00\x00\x3c"), 0.0)
    relay, client = _pair("", 0)
    with pytest.raises(RemoteProtocolError, match="BIND_OK of"):
        client.receive_data(
            encode(FrameType.BIND_OK, payload=b"\x00\x00\x00\x00\x00\x3c\x1f\x90\x00\x00\x01a"),
            0.0,
        )


@pytest.mark.parametrize(
    "payload",
    [b"\x00", b"\x00\x00\x01", b"\x00\x00\x01\x03ap", b"\x00\x00\x00\x01a", b"\x00\x00\x04\x01a",
     b"\x00\x00\x01\x01\xff"],
)
def test_relay_refuses_malformed_named_binds(payload: bytes) -> None:
    relay = Session("relay", 0.0, SessionConfig(), tokens={"a": b"k" * 16})
    client = Session("client", 0.0, SessionConfig(), token=b"k" * 16, client_id=b"c" * 16)
    relay.receive_data(b"".join(client.data_to_send(0.0)), 0.0)  # HELLO
    client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)  # HELLO_ACK
    relay.receive_data(b"".join(client.data_to_send(0.0)), 0.0)  # AUTH
    assert relay.state is State.AUTHENTICATED
    with pytest.raises(RemoteProtocolError):
        relay.receive_data(encode(FrameType.BIND, payload=payload), 0.0)
    assert relay.closed


# ------------------------------------------------------------------------- command line

T = ["--token", "t" * 16]
EXPOSE = ["expose", "--server", "r:9000", "--local", ":3000", *T]


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_cli_named_bind_options() -> None:
    assert _named(_args(EXPOSE)) == ("", 0)
    assert _named(_args([*EXPOSE, "--http", "--subdomain", "API"])) == ("api", ROUTE_HTTP)
    assert _named(_args([*EXPOSE, "--https", "--subdomain", "s"])) == ("s", ROUTE_TLS)
    assert _named(_args([*EXPOSE, "--subdomain", "s", "--http", "--https"]))[1] == 3
    name, routes = _named(_args([*EXPOSE, "--http"]))  # random name, kept for the run
    assert len(name) == 8 and routes == ROUTE_HTTP
    with pytest.raises(ConfigError, match="--subdomain: bad subdomain"):
        _named(_args([*EXPOSE, "--subdomain", "a.b"]))
    with pytest.raises(ConfigError, match="exclude each other"):
        _named(_args([*EXPOSE, "--http", "--remote-port", "10001"]))


def test_cli_refusals_are_one_line() -> None:
    with pytest.raises(ConfigError, match="need --domain"):
        trio.run(cmd_relay, _args(["relay", *T, "--http-addr", ":8080"]))
    with pytest.raises(ConfigError, match="loopback address only"):
        trio.run(cmd_expose, _args([*EXPOSE, "--inspect", "0.0.0.0:4040"]))
