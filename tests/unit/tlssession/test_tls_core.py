"""TLSEngine and TLSSession, client and server cores wired back to back in memory."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trivpn.errors import ConfigError, FatalError, LocalProtocolError, RemoteProtocolError
from trivpn.tlssession.core import (
    ControlMessage,
    HandshakeComplete,
    KeyExchangeComplete,
    PushReplyReceived,
    PushRequestReceived,
    TLSSession,
)
from trivpn.tlssession.keymethod import occ_options_string
from trivpn.tlssession.keys import EKM_LABEL, key2_from_prf
from trivpn.tlssession.tls import TLSConfig, TLSEngine, format_subject

CLIENT_SID = bytes.fromhex("0102030405060708")
SERVER_SID = bytes.fromhex("a1a2a3a4a5a6a7a8")
CLIENT_OPTIONS = occ_options_string(
    proto="udp", tls_client=True, tls_auth=False, key_direction=None
)
SERVER_OPTIONS = occ_options_string(
    proto="udp", tls_client=False, tls_auth=False, key_direction=None
)
PEER_INFO = "IV_VER=2.6.14\nIV_PLAT=linux\nIV_PROTO=10\nIV_CIPHERS=AES-256-GCM\n"

# -- certificates (built with `cryptography` so the EKU and key usage are under our control) --

_NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Pki:
    cert_pem: str
    key_pem: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(cn: str, org: str | None = None, country: str | None = None) -> x509.Name:
    attrs = []
    if country:
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _pki(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pki:
    return Pki(
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        key,
        cert,
    )


def make_ca(cn: str) -> Pki:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn, "Test CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _pki(cert, key)


def make_leaf(
    ca: Pki,
    cn: str,
    *,
    eku: tuple[x509.ObjectIdentifier, ...] = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    key_usage: bool = True,
    subject: x509.Name | None = None,
) -> Pki:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject or _name(cn, "Example", "US"))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, True, False, False, False, False),
            critical=True,
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    return _pki(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class World:
    ca: Pki
    other_ca: Pki
    server: Pki
    client: Pki
    server_only: Pki  # EKU serverAuth only
    client_only: Pki  # EKU clientAuth only
    no_ku: Pki  # serverAuth EKU but no key usage extension
    stranger: Pki  # signed by other_ca
    no_eku: Pki  # key usage but no extended key usage


@pytest.fixture(scope="module")
def world() -> World:
    ca = make_ca("Trivpn Test CA")
    other = make_ca("Other CA")
    return World(
        ca=ca,
        other_ca=other,
        server=make_leaf(ca, "vpn.example.com"),
        client=make_leaf(ca, "alice"),
        server_only=make_leaf(ca, "srv-only", eku=(ExtendedKeyUsageOID.SERVER_AUTH,)),
        client_only=make_leaf(ca, "cli-only", eku=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
        no_ku=make_leaf(ca, "no-ku", eku=(ExtendedKeyUsageOID.SERVER_AUTH,), key_usage=False),
        stranger=make_leaf(other, "vpn.example.com"),
        no_eku=make_leaf(ca, "no-eku", eku=()),
    )


def server_config(world: World, **kw: object) -> TLSConfig:
    base = TLSConfig(
        ca_pem=world.ca.cert_pem,
        cert_pem=world.server.cert_pem,
        key_pem=world.server.key_pem,
        is_server=True,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def client_config(world: World, **kw: object) -> TLSConfig:
    base = TLSConfig(
        ca_pem=world.ca.cert_pem,
        cert_pem=world.client.cert_pem,
        key_pem=world.client.key_pem,
        remote_cert_tls="server",
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _counter_random() -> object:
    state = [0]

    def rnd(n: int) -> bytes:
        state[0] += 1
        return bytes((state[0] + i) % 256 for i in range(n))

    return rnd


def make_pair(
    world: World,
    *,
    client_kw: dict[str, object] | None = None,
    server_kw: dict[str, object] | None = None,
    **session_kw: object,
) -> tuple[TLSSession, TLSSession]:
    client = TLSSession(
        client_config(world, **(client_kw or {})),
        options_string=CLIENT_OPTIONS,
        peer_info=PEER_INFO,
        username="alice",
        password="secret",
        **session_kw,  # type: ignore[arg-type]
    )
    server = TLSSession(server_config(world, **(server_kw or {})), options_string=SERVER_OPTIONS)
    return client, server


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def pump(client: TLSSession, server: TLSSession, now: float = 0.0, chunk: int = 1200) -> int:
    """Move ciphertext both ways until both are quiet; returns the number of rounds."""
    for rounds in range(50):
        moved = False
        for src, dst in ((client, server), (server, client)):
            data = src.ciphertext_to_send(now)
            if data:
                moved = True
                for part in _chunks(data, chunk):
                    dst.receive_ciphertext(part, now)
        if not moved:
            return rounds
    raise AssertionError("the two cores never went quiet")


def connect(
    world: World, chunk: int = 1200, now: float = 0.0, **kw: object
) -> tuple[TLSSession, TLSSession, list[object], list[object]]:
    client, server = make_pair(world, **kw)  # type: ignore[arg-type]
    server.start(now)
    client.start(now)
    pump(client, server, now, chunk)
    return client, server, client.events(), server.events()


def _of(events: list[object], kind: type) -> list[object]:
    return [e for e in events if isinstance(e, kind)]


# -- the full exchange ---------------------------------------------------------------------


def test_the_servers_common_name_is_the_certificates_own_cn_made_printable(world: World) -> None:
    """A value holding ", CN=alice" (here an OU after the CN) or a line break must not make
    the server take another client's name or write extra status/log lines: the name is
    the last CN attribute itself, control characters remapped to '_' (OpenVPN's
    string_mod_remap_name: Debian's openvpn 2.6.14 took such a certificate as "mal_X,é",
    not alice). Before, the server parsed the rendered subject and got "alice"."""
    tricky = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
        x509.NameAttribute(NameOID.COMMON_NAME, "mal\nCLIENT_LIST,x\u00e9"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x, CN=alice"),
    ])
    mallory = make_leaf(world.ca, "", subject=tricky)
    _, _, _, sev = connect(world, client_kw={"cert_pem": mallory.cert_pem, "key_pem": mallory.key_pem})
    (shs,) = _of(sev, HandshakeComplete)
    assert shs.peer_subject.endswith(", CN=alice")  # the rendered subject stays ambiguous
    assert shs.common_name == "mal_CLIENT_LIST,x\u00e9"  # UTF-8 stays, as in OpenVPN
    (ok,) = _of(connect(world)[3], HandshakeComplete)
    assert ok.common_name == "alice"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
@pytest.mark.parametrize("chunk", [1200, 1])
def test_full_exchange(world: World, version: str, chunk: int) -> None:
    client, server, cev, sev = connect(world, chunk=chunk, server_kw={"tls_version_max": version})
    expected = f"TLSv{version}"
    (hs,) = _of(cev, HandshakeComplete)
    assert hs == HandshakeComplete(
        "C=US, O=Example, CN=vpn.example.com", expected, client.engine.cipher_name or "",
        common_name="vpn.example.com",
    )
    (shs,) = _of(sev, HandshakeComplete)
    assert shs.peer_subject == "C=US, O=Example, CN=alice"
    assert shs.tls_version == expected
    assert _of(cev, KeyExchangeComplete) == [KeyExchangeComplete(SERVER_OPTIONS, "")]
    assert _of(sev, KeyExchangeComplete) == [KeyExchangeComplete(CLIENT_OPTIONS, PEER_INFO)]
    # order on the client: handshake, then key exchange
    assert [type(e) for e in cev] == [HandshakeComplete, KeyExchangeComplete]
    assert _of(sev, PushRequestReceived) == [PushRequestReceived()]
    # what each side learned of the other's key-method-2
    assert server.peer_km == client.local_km
    assert client.peer_km == server.local_km
    assert server.peer_km is not None and server.peer_km.username == "alice"
    assert server.peer_km.password == "secret"
    assert client.peer_km is not None and client.peer_km.pre_master is None

    server.send_control_message("PUSH_REPLY,route-gateway 10.8.0.1,peer-id 0,cipher AES-256-GCM")
    pump(client, server, 1.0, chunk)
    assert client.events() == [
        PushReplyReceived(["route-gateway 10.8.0.1", "peer-id 0", "cipher AES-256-GCM"])
    ]
    assert client.get_timer() is None

    for ekm in (True, False):
        ck = client.data_key2(ekm=ekm, client_sid=CLIENT_SID, server_sid=SERVER_SID)
        sk = server.data_key2(ekm=ekm, client_sid=CLIENT_SID, server_sid=SERVER_SID)
        assert len(ck) == 256
        assert ck == sk
    ekm_key = client.data_key2(ekm=True, client_sid=CLIENT_SID, server_sid=SERVER_SID)
    prf_key = client.data_key2(ekm=False, client_sid=CLIENT_SID, server_sid=SERVER_SID)
    assert ekm_key != prf_key
    assert ekm_key == client.engine.export_keying_material(EKM_LABEL, 256)
    # the PRF path is by role: client's pre_master/randoms first, then the server's
    assert client.local_km is not None and client.peer_km is not None
    assert prf_key == key2_from_prf(client.local_km, client.peer_km, CLIENT_SID, SERVER_SID)
    assert prf_key != key2_from_prf(client.local_km, client.peer_km, SERVER_SID, CLIENT_SID)


def test_push_reply_with_continuation(world: World) -> None:
    client, server, _, _ = connect(world)
    server.send_control_message("PUSH_REPLY,route-gateway 10.8.0.1,ping 10,push-continuation 2")
    pump(client, server, 1.0)
    assert client.events() == []
    server.send_control_message("PUSH_REPLY,ifconfig 10.8.0.2 255.255.255.0,push-continuation 1")
    pump(client, server, 2.0)
    assert client.events() == [
        PushReplyReceived(["route-gateway 10.8.0.1", "ping 10", "ifconfig 10.8.0.2 255.255.255.0"])
    ]
    # a bare PUSH_REPLY is valid and complete on its own
    server.send_control_message("PUSH_REPLY")
    pump(client, server, 3.0)
    assert client.events() == [PushReplyReceived([])]


def test_continuation_split_byte_by_byte(world: World) -> None:
    client, server, _, _ = connect(world, chunk=1)
    parts = [f"PUSH_REPLY,route 10.{i}.0.0 255.255.0.0,push-continuation 2" for i in range(3)]
    parts.append("PUSH_REPLY,peer-id 7")
    for text in parts:
        server.send_control_message(text)
    pump(client, server, 1.0, chunk=1)
    (ev,) = client.events()
    assert ev == PushReplyReceived(
        [f"route 10.{i}.0.0 255.255.0.0" for i in range(3)] + ["peer-id 7"]
    )


def test_control_messages_and_record_framing(world: World) -> None:
    client, server, _, _ = connect(world)
    server.send_control_message("AUTH_FAILED,bad password")
    # several NUL-separated strings in one record; one with a non-printable byte
    server.engine.write(b"INFO,hello\x00INFO,\xffbad\x00HALT\x00\x00RESTART,tab\there\x00")
    pump(client, server, 1.0)
    assert client.events() == [
        ControlMessage("AUTH_FAILED,bad password"),
        ControlMessage("INFO,hello"),
        ControlMessage("HALT"),
    ]
    assert client.dropped_control_messages == 2
    # the client's EXIT reaches the server as an ordinary control message
    client.send_control_message("EXIT")
    pump(client, server, 2.0)
    assert server.events() == [ControlMessage("EXIT")]


def test_server_messages_before_key_method_are_held(world: World) -> None:
    client, server = make_pair(world)
    server.send_control_message("INFO,early")  # must not overtake the server's key-method-2
    client.start(0.0)
    pump(client, server)
    events = client.events()
    assert [type(e) for e in events] == [HandshakeComplete, KeyExchangeComplete, ControlMessage]
    assert events[-1] == ControlMessage("INFO,early")


def test_push_request_retry(world: World) -> None:
    client, server, _, sev = connect(world, now=100.0)
    assert _of(sev, PushRequestReceived) == [PushRequestReceived()]
    assert client.get_timer() == 105.0
    client.handle_timer(104.9)  # early: nothing
    pump(client, server, 104.9)
    assert server.events() == []
    client.handle_timer(105.0)
    assert client.get_timer() == 110.0
    pump(client, server, 105.0)
    assert server.events() == [PushRequestReceived()]
    client.handle_timer(111.0)
    assert client.get_timer() == 116.0
    pump(client, server, 111.0)
    assert server.events() == [PushRequestReceived()]
    # a first continuation part pushes the retry back a whole interval
    server.send_control_message("PUSH_REPLY,ping 10,push-continuation 2")
    pump(client, server, 112.0)
    assert client.get_timer() == 117.0
    server.send_control_message("PUSH_REPLY,ping-restart 60,push-continuation 1")
    pump(client, server, 113.0)
    assert client.events() == [PushReplyReceived(["ping 10", "ping-restart 60"])]
    assert client.get_timer() is None
    client.handle_timer(200.0)
    pump(client, server, 200.0)
    assert server.events() == []


def test_custom_interval_and_no_pull(world: World) -> None:
    client, server, _, sev = connect(world, now=10.0, push_request_interval=2.0)
    assert client.get_timer() == 12.0
    client2, server2, _, sev2 = connect(world, now=10.0, pull=False)
    assert client2.get_timer() is None
    assert _of(sev2, PushRequestReceived) == []


def test_server_may_push_without_request(world: World) -> None:
    """IV_PROTO_REQUEST_PUSH: an unsolicited PUSH_REPLY right after key method 2 is fine."""
    client, server = make_pair(world, pull=False)
    client.start(0.0)
    pump(client, server)
    server.send_control_message("PUSH_REPLY,peer-id 3")
    pump(client, server)
    assert _of(client.events(), PushReplyReceived) == [PushReplyReceived(["peer-id 3"])]


def test_send_control_message_validation(world: World) -> None:
    client, server, _, _ = connect(world)
    for bad in ["", "caf\u00e9", "two\nlines", "nul\x00inside", "x" * 2048]:
        with pytest.raises(LocalProtocolError):
            client.send_control_message(bad)
    client.send_control_message("x" * 2047)  # 2047 + NUL is exactly one full record
    pump(client, server)
    assert server.events() == [ControlMessage("x" * 2047)]


def test_misuse(world: World) -> None:
    client, server = make_pair(world)
    with pytest.raises(LocalProtocolError):
        client.receive_ciphertext(b"\x16\x03\x01", 0.0)  # not started
    with pytest.raises(LocalProtocolError):
        client.data_key2(ekm=False, client_sid=CLIENT_SID, server_sid=SERVER_SID)
    client.start(0.0)
    with pytest.raises(LocalProtocolError):
        client.start(0.0)
    with pytest.raises(LocalProtocolError):
        client.engine.export_keying_material(EKM_LABEL, 256)


def test_malformed_key_method_from_peer(world: World) -> None:
    client, server = make_pair(world)
    client.start(0.0)
    # run the handshake with a server engine that sends garbage instead of key method 2
    engine = TLSEngine(server_config(world))
    engine.write(b"\x00\x00\x00\x00\x03" + bytes(100))
    for _ in range(10):
        data = client.ciphertext_to_send(0.0)
        if data:
            engine.receive_ciphertext(data)
        back = engine.ciphertext_to_send()
        if back:
            try:
                client.receive_ciphertext(back, 0.0)
            except RemoteProtocolError as exc:
                assert "key method" in str(exc)
                return
    raise AssertionError("the malformed key-method-2 was not rejected")


def test_garbage_ciphertext(world: World) -> None:
    server = TLSSession(server_config(world), options_string=SERVER_OPTIONS)
    with pytest.raises(RemoteProtocolError):
        server.receive_ciphertext(b"GET / HTTP/1.1\r\n\r\n" * 4, 0.0)
    with pytest.raises(RemoteProtocolError):  # and it stays dead
        server.receive_ciphertext(b"\x16\x03\x01", 0.0)


# -- certificate checks --------------------------------------------------------------------


def _fails(
    world: World,
    *,
    client_kw: dict[str, object] | None = None,
    server_kw: dict[str, object] | None = None,
) -> str:
    with pytest.raises(FatalError) as info:
        connect(world, client_kw=client_kw, server_kw=server_kw)
    return str(info.value)


def test_wrong_ca(world: World) -> None:
    # OpenSSL sends the server's chain up to its (unknown to us) root, as OpenVPN does
    msg = _fails(world, client_kw={"ca_pem": world.other_ca.cert_pem})
    assert msg == (
        "server certificate verification failed: self-signed certificate in certificate "
        "chain (subject O=Test CA, CN=Trivpn Test CA)"
    )


def test_server_cert_from_unknown_ca(world: World) -> None:
    msg = _fails(
        world,
        server_kw={"cert_pem": world.stranger.cert_pem, "key_pem": world.stranger.key_pem},
    )
    assert msg == (
        "server certificate verification failed: unable to get local issuer certificate "
        "(subject C=US, O=Example, CN=vpn.example.com)"
    )


def test_server_rejects_client_cert(world: World) -> None:
    # the server trusts only other_ca; the client's certificate is refused on the server
    client, server = make_pair(world, server_kw={"ca_pem": world.other_ca.cert_pem})
    server.start(0.0)
    client.start(0.0)
    with pytest.raises(FatalError) as info:
        pump(client, server)
    assert str(info.value) == (
        "client certificate verification failed: self-signed certificate in certificate "
        "chain (subject O=Test CA, CN=Trivpn Test CA)"
    )
    # the client learns of it through the server's alert
    with pytest.raises(FatalError) as info:
        client.receive_ciphertext(server.ciphertext_to_send(0.0), 0.0)
    assert (
        str(info.value) == "the server rejected our certificate (TLS alert: tlsv1 alert unknown ca)"
    )


def test_remote_cert_tls_server_refuses_client_eku(world: World) -> None:
    msg = _fails(
        world,
        server_kw={"cert_pem": world.client_only.cert_pem, "key_pem": world.client_only.key_pem},
    )
    # OpenSSL's own purpose check (a TLS client verifies for "SSL server") fires before
    # ours, exactly as in OpenVPN; either way the certificate is refused by name
    assert msg == (
        "server certificate verification failed: unsuitable certificate purpose "
        "(subject C=US, O=Example, CN=cli-only)"
    )


def test_remote_cert_tls_requires_eku(world: World) -> None:
    """Without any EKU OpenSSL accepts the purpose; remote-cert-tls must still refuse."""
    msg = _fails(
        world, server_kw={"cert_pem": world.no_eku.cert_pem, "key_pem": world.no_eku.key_pem}
    )
    assert msg == (
        "server certificate verification failed: remote-cert-tls server: no extended key "
        "usage extension (subject C=US, O=Example, CN=no-eku)"
    )
    # without remote-cert-tls the same certificate is fine
    _, _, cev, _ = connect(
        world,
        client_kw={"remote_cert_tls": None},
        server_kw={"cert_pem": world.no_eku.cert_pem, "key_pem": world.no_eku.key_pem},
    )
    assert _of(cev, KeyExchangeComplete)


def test_remote_cert_tls_requires_key_usage(world: World) -> None:
    msg = _fails(
        world, server_kw={"cert_pem": world.no_ku.cert_pem, "key_pem": world.no_ku.key_pem}
    )
    assert "no key usage" in msg


def test_remote_cert_tls_server_accepts_server_eku(world: World) -> None:
    client, _, cev, _ = connect(
        world,
        server_kw={"cert_pem": world.server_only.cert_pem, "key_pem": world.server_only.key_pem},
    )
    assert _of(cev, KeyExchangeComplete)


def test_remote_cert_tls_client_on_server(world: World) -> None:
    with pytest.raises(FatalError) as info:
        connect(
            world,
            client_kw={
                "cert_pem": world.server_only.cert_pem,
                "key_pem": world.server_only.key_pem,
            },
            server_kw={"remote_cert_tls": "client"},
        )
    assert "certificate" in str(info.value)
    _, _, _, sev = connect(world, server_kw={"remote_cert_tls": "client"})
    assert _of(sev, KeyExchangeComplete)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("C=US, O=Example, CN=vpn.example.com", "subject"),
        ("vpn.example.com", "name"),
        ("vpn.", "name-prefix"),
        ("vpn.example.com", "name-prefix"),
    ],
)
def test_verify_x509_name_matches(world: World, name: str, kind: str) -> None:
    _, _, cev, _ = connect(world, client_kw={"verify_x509_name": (name, kind)})
    assert _of(cev, KeyExchangeComplete)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("C=US, O=Example, CN=other", "subject"),
        ("CN=vpn.example.com", "subject"),
        ("vpn.example", "name"),
        ("VPN.example.com", "name"),
        ("example", "name-prefix"),
    ],
)
def test_verify_x509_name_mismatch(world: World, name: str, kind: str) -> None:
    msg = _fails(world, client_kw={"verify_x509_name": (name, kind)})
    assert f"verify-x509-name {kind}" in msg
    assert "server certificate verification failed" in msg


def test_format_subject_matches_openvpn_style(world: World) -> None:
    assert format_subject(world.server.cert.subject) == "C=US, O=Example, CN=vpn.example.com"


def test_format_subject_escapes_control_characters_as_openssl_esc_ctrl() -> None:
    """The subject goes into log lines ("TLS ok: ...") and tls_id_N: a CN with a line break
    must not start a line of its own. `openssl x509 -nameopt
    sep_comma_plus_space,sname,utf8,esc_ctrl` (OpenVPN's flags) prints this CN the same."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mal\nX\x7f\u00e9")])
    assert format_subject(name) == "CN=mal\\0AX\\7F\u00e9"


def test_trustme_certificates_work() -> None:
    ca = trustme.CA()
    srv = ca.issue_cert("srv", common_name="srv")
    cli = ca.issue_cert("cli", common_name="cli")
    ca_pem = ca.cert_pem.bytes().decode()

    def cfg(leaf: trustme.LeafCert, is_server: bool) -> TLSConfig:
        return TLSConfig(
            ca_pem=ca_pem,
            cert_pem=b"".join(p.bytes() for p in leaf.cert_chain_pems).decode(),
            key_pem=leaf.private_key_pem.bytes().decode(),
            is_server=is_server,
            remote_cert_tls="client" if is_server else "server",
        )

    client = TLSSession(cfg(cli, False), options_string=CLIENT_OPTIONS)
    server = TLSSession(cfg(srv, True), options_string=SERVER_OPTIONS)
    client.start(0.0)
    pump(client, server)
    assert _of(client.events(), KeyExchangeComplete)
    assert _of(server.events(), PushRequestReceived)


# -- configuration errors ------------------------------------------------------------------


def test_config_errors(world: World) -> None:
    good = client_config(world)
    bad = [
        replace(good, ca_pem="not a pem"),
        replace(good, ca_pem=""),
        replace(good, cert_pem="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        replace(good, key_pem="garbage"),
        replace(good, key_pem=world.server.key_pem),  # key of another certificate
        replace(good, key_pem=None),
        replace(good, tls_version_min="1.1"),
        replace(good, tls_version_min="1.3", tls_version_max="1.2"),
        replace(good, remote_cert_tls="peer"),
        replace(good, verify_x509_name=("x", "cn")),
        replace(server_config(world), cert_pem=None, key_pem=None),
    ]
    for config in bad:
        with pytest.raises(ConfigError) as info:
            TLSEngine(config)
        assert "\n" not in str(info.value)


def test_client_without_certificate(world: World) -> None:
    """A client may go without a certificate; a default server then refuses it."""
    client, server = make_pair(world, client_kw={"cert_pem": None, "key_pem": None})
    server.start(0.0)
    client.start(0.0)
    with pytest.raises(FatalError) as info:
        pump(client, server)
    assert str(info.value).startswith("the client sent no certificate")


def test_engine_write_limits(world: World) -> None:
    engine = TLSEngine(client_config(world))
    with pytest.raises(LocalProtocolError):
        engine.write(b"")
    with pytest.raises(LocalProtocolError):
        engine.write(b"x" * 2049)
    engine.write(b"x" * 2048)  # queued until the handshake is done
    assert engine.ciphertext_to_send() == b""  # not started yet: nothing to send
    engine.start()
    hello = engine.ciphertext_to_send()
    assert hello[:1] == b"\x16"  # a TLS handshake record (ClientHello)
    assert engine.ciphertext_to_send() == b""


def test_private_key_that_cannot_sign_tls_is_a_one_line_config_error(world: World) -> None:
    """A key type pyOpenSSL cannot use (X25519 here) is refused clearly, never a crash."""
    from cryptography.hazmat.primitives.asymmetric import x25519

    pem = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ConfigError, match="cannot sign a TLS handshake") as info:
        TLSEngine(client_config(world, key_pem=pem.decode()))
    assert "\n" not in str(info.value)


# -- a verify callback that meets what it cannot read fails verification, never crashes --------


def test_unparseable_certificate_fails_verification(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from OpenSSL import crypto

    def unreadable(self: crypto.X509) -> x509.Certificate:
        raise ValueError("not a certificate cryptography can read")

    monkeypatch.setattr(crypto.X509, "to_cryptography", unreadable)
    msg = _fails(world)  # a FatalError naming the cause, not a ValueError out of the handshake
    assert msg == "server certificate verification failed: certificate at depth 1 cannot be parsed"


def test_a_check_that_raises_fails_verification(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: TLSEngine, cert: x509.Certificate, subject: str) -> str | None:
        raise IndexError("a bug in a leaf check")

    monkeypatch.setattr(TLSEngine, "_check_leaf", broken)
    msg = _fails(world, client_kw={"remote_cert_tls": "server"})
    assert msg == "server certificate verification failed: the certificate could not be checked (IndexError)"
