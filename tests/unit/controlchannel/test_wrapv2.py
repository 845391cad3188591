"""tls-crypt-v2, server side: opening wrapped client keys (WKc), also ones made by openvpn."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.require import in_ci
from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.controlchannel.wrap import StaticKey, TLSCrypt, TLSCryptV2ClientKey
from trivpn.controlchannel.wrapv2 import (
    TLS_CRYPT_V2_MIN_WKC_LEN,
    TLSCryptV2Server,
    TLSCryptV2ServerKey,
    split_wkc,
    unwrap_client_key,
    wrap_client_key,
)
from trivpn.errors import ConfigError, RemoteProtocolError

SERVER = TLSCryptV2ServerKey(bytes(range(128)))
KC = StaticKey(bytes(range(255, -1, -1)))
TIMESTAMP_META = b"\x01" + (1_700_000_000).to_bytes(8, "big")


def _server_text(raw: bytes) -> str:
    body = base64.b64encode(raw).decode()
    return (
        "-----BEGIN OpenVPN tls-crypt-v2 server key-----\n"
        + "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        + "\n-----END OpenVPN tls-crypt-v2 server key-----\n"
    )


def test_wrap_then_unwrap_gives_the_key_and_metadata_back() -> None:
    wkc = wrap_client_key(SERVER, KC, TIMESTAMP_META)
    assert len(wkc) == 32 + 256 + 9 + 2 == int.from_bytes(wkc[-2:], "big")  # reference §7.3
    opened = unwrap_client_key(SERVER, wkc)
    assert opened.key == KC and opened.metadata == TIMESTAMP_META
    assert TLSCryptV2ServerKey.from_text(_server_text(SERVER.data)) == SERVER


@pytest.mark.parametrize(
    ("mangle", "why"),
    [
        (lambda w: w[:-3] + w[-2:], "length mismatch"),  # one byte cut from the middle
        (lambda w: w[:10], "wrapped client key of"),  # far too short
        (lambda w: b"\x00" * 1100 + (1102).to_bytes(2, "big"), "wrapped client key of"),  # too long
        (lambda w: bytes([w[0] ^ 1]) + w[1:], "not authentic"),  # tag
        (lambda w: w[:100] + bytes([w[100] ^ 0x80]) + w[101:], "not authentic"),  # ciphertext
    ],
)
def test_bad_wrapped_keys_are_refused(mangle: object, why: str) -> None:
    wkc = wrap_client_key(SERVER, KC, TIMESTAMP_META)
    assert callable(mangle)
    with pytest.raises(RemoteProtocolError, match=why):
        unwrap_client_key(SERVER, mangle(wkc))


def test_another_server_key_cannot_open_it() -> None:
    wkc = wrap_client_key(SERVER, KC)
    with pytest.raises(RemoteProtocolError, match="not authentic"):
        unwrap_client_key(TLSCryptV2ServerKey(b"\x07" * 128), wkc)


@settings(deadline=None)
@given(st.binary(max_size=1200))
def test_random_bytes_never_open_and_never_crash(blob: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        unwrap_client_key(SERVER, blob)
    try:
        packet, wkc = split_wkc(blob)
    except RemoteProtocolError:
        return
    assert packet + wkc == blob and len(wkc) >= TLS_CRYPT_V2_MIN_WKC_LEN


def test_split_finds_the_appended_key_and_the_client_key_wraps_match() -> None:
    wkc = wrap_client_key(SERVER, KC)
    client = TLSCrypt(KC, server=False, timestamp=5)
    packet = client.wrap(b"\x50" + b"\x11" * 8 + b"\x00" + b"\x00\x00\x00\x00", 0.0)
    head, tail = split_wkc(packet + wkc)
    assert (head, tail) == (packet, wkc)
    ctx = TLSCryptV2Server(SERVER, timestamp=9)
    kc = ctx.open(tail).key
    assert ctx.wrap_for(kc).unwrap(head, 0.0)[9:] == b"\x00\x00\x00\x00\x00"
    with pytest.raises(RemoteProtocolError):
        split_wkc(packet)  # no key appended: its last two bytes are no plausible length


def test_server_key_text_errors() -> None:
    with pytest.raises(ConfigError, match="client key"):
        TLSCryptV2ServerKey.from_text("-----BEGIN OpenVPN tls-crypt-v2 client key-----\n")
    with pytest.raises(ConfigError, match="base64"):
        TLSCryptV2ServerKey.from_text(_server_text(SERVER.data).replace("A", "*", 1))
    with pytest.raises(ConfigError, match="64 bytes"):
        TLSCryptV2ServerKey.from_text(_server_text(SERVER.data[:64]))


def test_keys_made_by_the_real_openvpn(tmp_path: Path) -> None:
    if shutil.which("openvpn") is None:
        msg = "needs Debian's openvpn to make real tls-crypt-v2 keys (apt-get install openvpn)"
        if in_ci():
            pytest.fail(msg)  # never skip silently in CI
        pytest.skip(msg)
    srv = tmp_path / "server.key"
    subprocess.run(["openvpn", "--genkey", "tls-crypt-v2-server", str(srv)], check=True, capture_output=True)
    server = TLSCryptV2ServerKey.from_text(srv.read_text())
    for name, meta in (("default", None), ("user", "dXNlciBtZXRhZGF0YQ==")):
        cli = tmp_path / f"{name}.key"
        argv = ["openvpn", "--tls-crypt-v2", str(srv), "--genkey", "tls-crypt-v2-client", str(cli)]
        if meta is not None:
            argv.append(meta)  # `--genkey tls-crypt-v2-client FILE METADATA` (base64)
        subprocess.run(argv, check=True, capture_output=True)
        client = TLSCryptV2ClientKey.from_text(cli.read_text())
        opened = unwrap_client_key(server, client.wkc)
        assert opened.key == client.key
        if meta is None:
            assert opened.metadata[:1] == b"\x01" and len(opened.metadata) == 9  # a timestamp
        else:
            assert opened.metadata == b"\x00" + base64.b64decode(meta)
        # our sealing is the same deterministic function (SIV): byte-identical WKc
        assert wrap_client_key(server, opened.key, opened.metadata) == client.wkc


def test_verifies_answers_like_unwrap_and_records_nothing() -> None:
    """The server's float check asks a wrap without moving its replay window."""
    from trivpn.controlchannel.wrap import TLSAuth

    packet = b"\x20" + b"\x11" * 8 + b"\x00" + b"\x00\x00\x00\x01" + b"tls"
    pairs: list[tuple[TLSCrypt | TLSAuth, TLSCrypt | TLSAuth]] = [
        (TLSCrypt(KC, server=False, timestamp=5), TLSCrypt(KC, server=True, timestamp=6)),
        (TLSAuth(KC, 1, "SHA256", timestamp=5), TLSAuth(KC, 0, "SHA256", timestamp=6)),
    ]
    for sender, receiver in pairs:
        first, second = sender.wrap(packet, 0.0), sender.wrap(packet, 0.0)
        assert receiver.verifies(first, 0.0) and receiver.verifies(first, 0.0)
        assert receiver.unwrap(first, 0.0) == packet  # still accepted: nothing was recorded
        assert not receiver.verifies(first, 0.0)  # now it is a replay
        assert not receiver.verifies(second[:-1] + bytes([second[-1] ^ 1]), 0.0)
        assert not receiver.verifies(second[:12], 0.0)
        assert receiver.verifies(second, 0.0)
