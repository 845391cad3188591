"""A plain `expose` against a relay that expects TLS (or one that refuses it silently)
ends with one line saying what to check, not "the connection was closed".

A TLS relay's handshake fails on our plaintext HELLO and closes without a byte: the
client now says the relay closed the connection without answering and names the likely
causes (TLS: --tls; a source refused after failed logins: the token; the wrong port).
Bytes that start a TLS record (a TLS alert from a proxy in front) say the relay speaks
TLS. The other way round (`--tls` against a plain relay) is `dial_failure`'s, tested in
test_reverse_cli_input.py::test_tls_expose_says_a_plain_relay_did_not_answer_in_tls.
"""

from __future__ import annotations

import functools

import pytest
import trio
import trustme

from trivpn.errors import FatalError
from trivpn.reverse.expose import Expose, ExposeConfig
from trivpn.reverse.guard import GuardConfig
from trivpn.reverse.handshake import RELAY_SILENT, RELAY_SPEAKS_TLS
from trivpn.reverse.relay import Relay, RelayConfig
from trivpn.reverse.session import Session, SessionClosed

HOST = "127.0.0.1"
TOKEN = b"0123456789abcdef-tls-mismatch"
NOT_RECONNECTING = " (not reconnecting: --no-reconnect)"
SILENT_PLAIN = (
    "the relay closed the connection without answering: it may expect TLS (add --tls),"
    " refuse this address after failed logins (check the token), or --server may not be"
    " its tunnel port"
)
TLS_ALERT = b"\x15\x03\x01\x00\x02\x02\x46"  # fatal alert: protocol_version


async def _plain_expose_fails(port: int, token: bytes = TOKEN) -> str:
    """The error of a plain `expose --no-reconnect` against 127.0.0.1:`port` (bounded)."""
    expose = Expose(ExposeConfig(HOST, port, HOST, 9, token, reconnect=False))
    with trio.fail_after(10), pytest.raises(FatalError) as ei:
        await expose.run()
    return str(ei.value)


def _relay(**kw: object) -> Relay:
    return Relay(
        RelayConfig(HOST, 0, start_port=41300, end_port=41301, tokens={"a": TOKEN}, **kw)  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    d = tmp_path_factory.mktemp("tls")
    cert = trustme.CA().issue_cert("localhost")
    chain, key = d / "chain.pem", d / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(chain), str(key)


async def test_plain_expose_against_a_tls_relay_says_it_may_expect_tls(
    tls_files: tuple[str, str],
) -> None:
    relay = _relay(tls_cert=tls_files[0], tls_key=tls_files[1])
    async with trio.open_nursery() as nursery:
        port = await nursery.start(relay.serve)
        why = await _plain_expose_fails(port)
        nursery.cancel_scope.cancel()
    assert why == SILENT_PLAIN + NOT_RECONNECTING  # before: "the connection was closed"


async def test_a_source_refused_after_failed_logins_gets_the_same_hint() -> None:
    """A plain relay that refuses this address (max_failures wrong tokens) also closes
    without a byte; the line's "check the token" is the cause here."""
    relay = _relay(guard=GuardConfig(max_failures=1, failure_window=60))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(relay.serve)
        assert "the relay rejected the token" in await _plain_expose_fails(port, b"x" * 16)
        assert await _plain_expose_fails(port) == SILENT_PLAIN + NOT_RECONNECTING
        nursery.cancel_scope.cancel()


async def test_a_tls_answer_says_the_relay_speaks_tls() -> None:
    """A TLS endpoint that answers our HELLO with an alert (as a TLS proxy in front of a
    relay may): the line names TLS and the flag."""

    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(TLS_ALERT)
        with trio.move_on_after(5):  # the client hangs up first: it recognised the record
            await stream.receive_some(65536)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host=HOST))
        why = await _plain_expose_fails(listeners[0].socket.getsockname()[1])
        nursery.cancel_scope.cancel()
    assert why == (
        "the relay answered in TLS: it serves the tunnel over TLS (add --tls, and --tls-ca"
        " FILE if its certificate is not from a public CA)" + NOT_RECONNECTING
    )


# ------------------------------------------------------------- the core, without sockets


def _closed(session: Session) -> SessionClosed:
    [ev] = [e for e in session.events() if isinstance(e, SessionClosed)]
    return ev


def _client() -> Session:
    client = Session("client", 0.0, token=TOKEN, client_id=b"\x01" * 16)
    client.data_to_send(0.0)  # the HELLO
    return client


@pytest.mark.parametrize("first", [TLS_ALERT, TLS_ALERT[:2], b"\x16\x03\x01\x02\x00\x01"])
def test_client_core_recognises_a_tls_record_instead_of_hello_ack(first: bytes) -> None:
    client = _client()
    client.receive_data(first, 1.0)
    assert client.closed and _closed(client).reason == RELAY_SPEAKS_TLS
    assert not client.data_to_send(1.0)  # no GOAWAY frame to a TLS peer


def test_client_core_tells_a_silent_close_from_a_late_one() -> None:
    client = _client()
    client.receive_eof(1.0)
    assert _closed(client).reason == RELAY_SILENT
    client = _client()
    client.receive_data(b"\x01\x02\x00", 1.0)  # a partial frame, then the end
    client.receive_eof(1.0)
    assert _closed(client).reason == "the connection was closed"
    relay = Session("relay", 0.0, tokens={"a": TOKEN})
    relay.receive_eof(1.0)
    assert _closed(relay).reason == "the connection was closed"


def test_after_hello_ack_an_end_of_file_reads_as_before() -> None:
    client = Session("client", 0.0, token=TOKEN, client_id=b"\x01" * 16)
    relay = Session("relay", 0.0, tokens={"a": TOKEN})
    relay.receive_data(b"".join(client.data_to_send(0.0)), 0.0)  # HELLO
    client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)  # HELLO_ACK
    assert not client.closed
    client.receive_eof(1.0)
    assert _closed(client).reason == "the connection was closed"
