"""SessionConfig: a profile plus overrides, translated and validated once."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest
from helpers.profiles import make_profile, shared_pki

from trivpn import __version__
from trivpn.client import Client
from trivpn.controlchannel.wrap import EARLY_NEG_START, NoWrap, TLSAuth, TLSCrypt
from trivpn.errors import ConfigError
from trivpn.profile.profile import Profile, Remote
from trivpn.session.config import (
    ConnectionConfig,
    Keepalive,
    Reneg,
    SessionConfig,
    WrapConfig,
    build_wrap,
    wrap_key_bytes,
)

#: What the client has always announced (servers log and compare it; the integration tests
#: run it against Debian's openvpn). IV_PROTO 926 = DATA_V2 | REQUEST_PUSH | TLS_KEY_EXPORT
#: | AUTH_PENDING_KW | DYN_TLS_CRYPT | CC_EXIT_NOTIFY | AUTH_FAIL_TEMP; prf drops the two
#: exporter bits (406).
PEER_INFO = (
    "IV_VER=2.6.14\nIV_PLAT=linux\nIV_NCP=2\nIV_CIPHERS={ciphers}\nIV_PROTO={iv_proto}\n"
    "IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\nIV_GUI_VER=trivpn_{version}\n"
)
OCC = {
    ("udp", True): "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,keydir 1,auth SHA1,"
    "keysize 128,tls-auth,key-method 2,tls-client",
    ("tcp", True): "V4,dev-type tun,link-mtu 1543,tun-mtu 1500,proto TCPv4_CLIENT,keydir 1,auth SHA1,"
    "keysize 128,tls-auth,key-method 2,tls-client",
    ("udp", False): "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128,"
    "key-method 2,tls-client",
    ("tcp", False): "V4,dev-type tun,link-mtu 1543,tun-mtu 1500,proto TCPv4_CLIENT,auth SHA1,"
    "keysize 128,key-method 2,tls-client",
}


def tls_auth_block() -> str:
    return f"<tls-auth>\n{shared_pki().static_key}</tls-auth>\nkey-direction 1\n"


def v2_client_key_text() -> str:
    """A syntactically valid tls-crypt-v2 client key: Kc (256 bytes) + WKc ending in its length."""
    kc = bytes(range(256))
    wkc = bytes(40) + (42).to_bytes(2, "big")
    body = base64.b64encode(kc + wkc).decode()
    return f"-----BEGIN OpenVPN tls-crypt-v2 client key-----\n{body}\n-----END OpenVPN tls-crypt-v2 client key-----\n"


@pytest.mark.parametrize(("kd", "iv_proto"), [("auto", 926), ("ekm", 926), ("prf", 406)])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("tls_auth", [True, False])
def test_peer_info_and_options_string_are_unchanged(kd: str, iv_proto: int, proto: str, tls_auth: bool) -> None:
    extra = tls_auth_block() if tls_auth else "data-ciphers AES-128-GCM:BF-CBC:CHACHA20-POLY1305\n"
    cfg = SessionConfig.from_profile(make_profile(extra), key_derivation=kd)
    ciphers = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305" if tls_auth else "AES-128-GCM:CHACHA20-POLY1305"
    assert cfg.peer_info == PEER_INFO.format(ciphers=ciphers, iv_proto=iv_proto, version=__version__)
    assert cfg.iv_proto == iv_proto
    assert cfg.connections[0].options_string(proto) == OCC[(proto, tls_auth)]
    # the TLS session the client builds carries exactly these
    session = Client(cfg)._make_session_factory(proto, cfg.connections[0])(0, None)
    assert session._peer_info == cfg.peer_info and session._options == OCC[(proto, tls_auth)]


def one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize(
    ("change", "overrides", "message"),
    [
        ({}, {"key_derivation": "hkdf"}, "key derivation must be auto, ekm or prf, not 'hkdf'"),
        ({"ca": None}, {}, "the profile has no 'ca': the server could not be verified"),
        ({"data_ciphers": ["BF-CBC"]}, {}, "none of data-ciphers (BF-CBC) is supported"),
        ({}, {"family": 5}, "the address family must be 4 or 6"),
        ({}, {"role": "server"}, "the server role is not supported yet"),
    ],
)
def test_invalid_input_is_a_one_line_config_error(
    change: dict[str, Any], overrides: dict[str, Any], message: str
) -> None:
    profile = dataclasses.replace(make_profile(), **change)
    with pytest.raises(ConfigError) as exc:
        SessionConfig.from_profile(profile, **overrides)
    assert message in one_line(exc)


def test_unusable_pem_fails_when_the_config_is_built() -> None:
    profile = dataclasses.replace(make_profile(), ca="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError) as exc:
        SessionConfig.from_profile(profile)
    assert one_line(exc)


def test_a_bad_wrap_key_fails_when_the_config_is_built() -> None:
    profile = dataclasses.replace(make_profile(), tls_crypt="-----BEGIN OpenVPN Static key V1-----\nzz\n")
    with pytest.raises(ConfigError) as exc:
        SessionConfig.from_profile(profile)
    assert "static key" in one_line(exc)


def test_keepalive_reneg_and_cipher_policy() -> None:
    cfg = SessionConfig.from_profile(make_profile("keepalive 10 60\n"))
    assert cfg.keepalive == Keepalive(10.0, 60.0, 0.0)
    assert cfg.reneg == Reneg(3600.0, 0, 0)
    cfg = SessionConfig.from_profile(
        make_profile(
            "keepalive 10 60\nping 5\nping-exit 300\nreneg-sec 0\nreneg-bytes 1000\nreneg-pkts 50\n"
            "data-ciphers-fallback AES-256-CBC\nauth SHA256\n"
        )
    )
    assert cfg.keepalive == Keepalive(5.0, 60.0, 300.0)
    assert tuple(cfg.keepalive) == (5.0, 60.0, 300.0)  # what the TLS service takes
    assert cfg.reneg == Reneg(0.0, 1000, 50)
    policy = cfg.cipher_policy()
    assert policy.data_ciphers == tuple(cfg.ciphers) and policy.fallback == "AES-256-CBC"
    assert policy.auth == "SHA256" and policy.key_derivation == "auto"
    assert cfg.cipher_policy() is not policy  # a fresh object per session


def test_overrides_are_recorded_and_secrets_stay_out_of_repr() -> None:
    cfg = SessionConfig.from_profile(
        make_profile(tls_auth_block()),
        username="alice",
        password="s3cret-pw",
        family=6,
        hand_window=30.0,
        data_threads=False,
        low_latency=True,
        no_reconnect=True,
        give_up_after=12.0,
    )
    assert (cfg.username, cfg.password, cfg.family, cfg.hand_window) == ("alice", "s3cret-pw", 6, 30.0)
    assert (cfg.data_threads, cfg.low_latency, cfg.no_reconnect, cfg.give_up_after) == (False, True, True, 12.0)
    assert cfg.role == "client" and not cfg.tls.is_server
    text = repr(cfg)
    assert "s3cret-pw" not in text and "PRIVATE KEY" not in text and "Static key" not in text
    key = cfg.connections[0].wrap.key
    assert key is not None and key.data.hex()[:32] not in text
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.username = "mallory"  # type: ignore[misc]  # frozen on purpose


def test_connections_carry_their_own_retry_settings_and_window() -> None:
    text = (
        "connect-retry 2 8\nserver-poll-timeout 5\nremote-random\n"
        "<connection>\nremote a.example 1195\nproto udp\n</connection>\n"
        "<connection>\nremote b.example 443 tcp\nconnect-retry 3 40\nconnect-retry-max 2\n"
        "connect-timeout 120\n</connection>\n"
    )
    cfg = SessionConfig.from_profile(make_profile(text, remote=""), hand_window=60.0)
    first, second = cfg.connections
    assert first.remotes == (Remote("a.example", 1195, "udp"),)
    assert second.remotes == (Remote("b.example", 443, "tcp"),)
    assert first.connect_retry == (2.0, 8.0) and first.connect_retry_max is None
    assert second.connect_retry == (3.0, 40.0) and second.connect_retry_max == 2
    assert first.connect_window == 5.0 and second.connect_window == 60.0  # min with hand-window
    assert cfg.remote_random


def test_default_connect_retry() -> None:
    (conn,) = SessionConfig.from_profile(make_profile()).connections
    assert conn.connect_retry == (1.0, 30.0) and conn.connect_window == 60.0


def test_wrap_kinds() -> None:
    pki = shared_pki()
    base = make_profile()
    none = WrapConfig.from_profile(base)
    assert none.kind == "none" and none.key_bytes is None
    wrap, wkc = none.build(0)
    assert isinstance(wrap, NoWrap) and wkc is None

    auth = WrapConfig.from_profile(dataclasses.replace(base, tls_auth=pki.static_key, key_direction=1, auth="SHA256"))
    assert (auth.kind, auth.key_direction, auth.digest) == ("tls-auth", 1, "SHA256")
    assert isinstance(auth.build(0)[0], TLSAuth) and auth.key_bytes is not None and len(auth.key_bytes) == 256

    crypt = WrapConfig.from_profile(dataclasses.replace(base, tls_crypt=pki.static_key))
    assert crypt.kind == "tls-crypt" and isinstance(crypt.build(0)[0], TLSCrypt)
    assert crypt.key_bytes == auth.key_bytes

    v2 = WrapConfig.from_profile(dataclasses.replace(base, tls_crypt_v2=v2_client_key_text()))
    wrap, wkc = v2.build(1_700_000_000)
    assert v2.kind == "tls-crypt-v2" and isinstance(wrap, TLSCrypt)
    assert wkc is not None and len(wkc) == 42 and v2.key_bytes == bytes(range(256))
    # the early-negotiation marker: v2 packet ids start above EARLY_NEG_START
    assert wrap._ids.next_id == EARLY_NEG_START + 1

    # the module-level helpers say the same
    assert build_wrap(dataclasses.replace(base, tls_crypt=pki.static_key), 0)[1] is None
    assert wrap_key_bytes(dataclasses.replace(base, tls_crypt=pki.static_key)) == crypt.key_bytes


def test_a_fresh_wrap_per_session() -> None:
    cfg = SessionConfig.from_profile(make_profile(tls_auth_block()))
    wrap = cfg.connections[0].wrap
    assert wrap.build(1)[0] is not wrap.build(1)[0]


def test_options_string_follows_the_connection() -> None:
    pki = shared_pki()
    plain = ConnectionConfig.from_profile(Profile(remotes=[Remote("a", 1194, "udp")]), 60.0)
    with_auth = ConnectionConfig.from_profile(
        Profile(remotes=[Remote("a", 1194, "udp")], tls_auth=pki.static_key, key_direction=1), 60.0
    )
    assert plain.options_string("udp") == OCC[("udp", False)]
    assert with_auth.options_string("udp") == OCC[("udp", True)]


def test_client_takes_a_profile_with_overrides_or_a_config() -> None:
    profile = make_profile()
    client = Client(profile, username="bob", key_derivation="prf")
    assert client.config.username == "bob" and client.config.key_derivation == "prf"
    cfg = SessionConfig.from_profile(profile)
    assert Client(cfg).config is cfg
    with pytest.raises(TypeError):
        Client(cfg, username="bob")
    with pytest.raises(ConfigError):
        Client(profile, key_derivation="bogus")
