"""Key method 2 messages, OCC options strings and peer-info (reference §4.1)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivpn.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from trivpn.tlssession.keymethod import (
    IV_PROTO_AUTH_FAIL_TEMP,
    IV_PROTO_AUTH_PENDING_KW,
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_DNS_OPTION,
    IV_PROTO_DYN_TLS_CRYPT,
    IV_PROTO_NCP_P2P,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    KeyMethod2,
    build_key_method_2,
    occ_options_string,
    parse_key_method_2,
    peer_info_string,
)

UDP_CLIENT = (
    "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,auth SHA1,keysize 128,"
    "key-method 2,tls-client"
)
UDP_SERVER = UDP_CLIENT.replace("tls-client", "tls-server")

PRE = bytes(range(48))
R1 = bytes(range(100, 132))
R2 = bytes(range(200, 232))


def client_msg(**kw: object) -> KeyMethod2:
    base = {
        "pre_master": PRE,
        "random1": R1,
        "random2": R2,
        "options": UDP_CLIENT,
        "username": "alice",
        "password": "s3cret",
        "peer_info": "IV_VER=2.6.14\nIV_PROTO=2\n",
    }
    base.update(kw)
    return KeyMethod2(**base)  # type: ignore[arg-type]


def server_msg() -> KeyMethod2:
    return KeyMethod2(None, R1, R2, UDP_SERVER, "", "", "")


# -- OCC strings ------------------------------------------------------------------------------


def test_occ_strings_as_2_6_14_sends_them() -> None:
    assert occ_options_string(proto="udp", tls_client=True, tls_auth=False, key_direction=None) == (
        UDP_CLIENT
    )
    assert occ_options_string(proto="tcp", tls_client=True, tls_auth=False, key_direction=None) == (
        "V4,dev-type tun,link-mtu 1543,tun-mtu 1500,proto TCPv4_CLIENT,auth SHA1,keysize 128,"
        "key-method 2,tls-client"
    )
    assert occ_options_string(proto="udp", tls_client=True, tls_auth=True, key_direction=1) == (
        "V4,dev-type tun,link-mtu 1541,tun-mtu 1500,proto UDPv4,keydir 1,auth SHA1,keysize 128,"
        "tls-auth,key-method 2,tls-client"
    )
    assert occ_options_string(
        proto="tcp-client", tls_client=True, tls_auth=True, key_direction=1
    ) == (
        "V4,dev-type tun,link-mtu 1543,tun-mtu 1500,proto TCPv4_CLIENT,keydir 1,auth SHA1,"
        "keysize 128,tls-auth,key-method 2,tls-client"
    )
    assert occ_options_string(
        proto="udp", tls_client=False, tls_auth=False, key_direction=None
    ) == (UDP_SERVER)
    assert occ_options_string(proto="tcp", tls_client=False, tls_auth=True, key_direction=0) == (
        "V4,dev-type tun,link-mtu 1543,tun-mtu 1500,proto TCPv4_SERVER,keydir 0,auth SHA1,"
        "keysize 128,tls-auth,key-method 2,tls-server"
    )
    # tls-auth without a key direction (bidirectional key): no keydir
    assert ",keydir" not in occ_options_string(
        proto="udp6", tls_client=True, tls_auth=True, key_direction=None
    )


def test_occ_string_errors() -> None:
    with pytest.raises(ConfigError):
        occ_options_string(proto="sctp", tls_client=True, tls_auth=False, key_direction=None)
    with pytest.raises(ConfigError):
        occ_options_string(proto="udp", tls_client=True, tls_auth=True, key_direction=2)


# -- peer-info ------------------------------------------------------------------------------


def test_peer_info_like_2_6_14() -> None:
    text = peer_info_string(
        version="2.6.14",
        platform="linux",
        ciphers=["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"],
        iv_proto=990,
        mtu=1600,
        extra={
            "IV_LZO_STUB": "1",
            "IV_NCP": "2",
            "IV_COMP_STUB": "1",
            "IV_COMP_STUBv2": "1",
            "IV_TCPNL": "1",
        },
    )
    assert text == (
        "IV_VER=2.6.14\nIV_PLAT=linux\nIV_TCPNL=1\nIV_MTU=1600\nIV_NCP=2\n"
        "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\nIV_PROTO=990\n"
        "IV_LZO_STUB=1\nIV_COMP_STUB=1\nIV_COMP_STUBv2=1\n"
    )


def test_peer_info_minimal_and_custom_extras() -> None:
    text = peer_info_string(
        version="2.6.14",
        platform="linux",
        ciphers=["AES-256-GCM", "AES-128-GCM"],
        iv_proto=IV_PROTO_DATA_V2,
        extra={"UV_ZZZ": "b", "UV_AAA": "a"},
    )
    assert text == (
        "IV_VER=2.6.14\nIV_PLAT=linux\nIV_CIPHERS=AES-256-GCM:AES-128-GCM\nIV_PROTO=2\n"
        "UV_ZZZ=b\nUV_AAA=a\n"
    )


def test_peer_info_errors() -> None:
    def make(**kw: object) -> str:
        args = {"version": "1", "platform": "linux", "ciphers": ["AES-256-GCM"], "iv_proto": 2}
        args.update(kw)
        return peer_info_string(**args)  # type: ignore[arg-type]

    with pytest.raises(ConfigError):
        make(iv_proto=IV_PROTO_TLS_KEY_EXPORT)  # bit 1 missing
    with pytest.raises(ConfigError):
        make(extra={"IV_VER": "again"})
    with pytest.raises(ConfigError):
        make(extra={"BAD KEY": "x"})
    with pytest.raises(ConfigError):
        make(extra={"UV_X": "line\nbreak"})


def test_iv_proto_bits() -> None:
    bits = [
        IV_PROTO_DATA_V2,
        IV_PROTO_REQUEST_PUSH,
        IV_PROTO_TLS_KEY_EXPORT,
        IV_PROTO_AUTH_PENDING_KW,
        IV_PROTO_NCP_P2P,
        IV_PROTO_DNS_OPTION,
        IV_PROTO_CC_EXIT_NOTIFY,
        IV_PROTO_AUTH_FAIL_TEMP,
        IV_PROTO_DYN_TLS_CRYPT,
    ]
    assert bits == [1 << n for n in range(1, 10)]
    # the 2.6.14 client's IV_PROTO=990 is bits 1,2,3,4,6,7,8,9 (not NCP_P2P)
    assert sum(bits) - IV_PROTO_NCP_P2P == 990


# -- build / parse --------------------------------------------------------------------------


def test_server_reply_size_matches_capture() -> None:
    data = build_key_method_2(server_msg())
    assert len(UDP_SERVER) + 1 == 101
    assert len(data) == 178  # 5 + 64 + 2 + 101 + 6
    assert data[:5] == b"\x00\x00\x00\x00\x02"
    assert data[5:69] == R1 + R2
    assert data[69:71] == struct.pack("!H", 101)
    assert data[-7:] == b"\x00" + b"\x00" * 6  # NUL of options, then three empty strings


def test_client_layout() -> None:
    msg = client_msg()
    data = build_key_method_2(msg)
    assert data[5:53] == PRE
    assert data[53:117] == R1 + R2
    pos = 117
    for text in (msg.options, msg.username, msg.password, msg.peer_info):
        (n,) = struct.unpack_from("!H", data, pos)
        assert n == len(text) + 1
        assert data[pos + 2 : pos + 2 + n] == text.encode() + b"\x00"
        pos += 2 + n
    assert pos == len(data)


def test_round_trip() -> None:
    for msg, from_client in ((client_msg(), True), (server_msg(), False)):
        assert parse_key_method_2(build_key_method_2(msg), from_client=from_client) == msg
    empty_creds = client_msg(username="", password="", peer_info="")
    data = build_key_method_2(empty_creds)
    assert data.endswith(b"\x00\x00" * 3)
    assert parse_key_method_2(data, from_client=True) == empty_creds


def test_lenient_like_openvpn() -> None:
    data = build_key_method_2(server_msg())
    # the method byte is only checked in its low nibble
    flagged = data[:4] + b"\x12" + data[5:]
    assert parse_key_method_2(flagged, from_client=False) == server_msg()
    # strings missing at the end read as empty; bytes after peer-info are ignored
    short = data[:-6]
    assert parse_key_method_2(short, from_client=False) == server_msg()
    assert parse_key_method_2(data + b"junk", from_client=False) == server_msg()
    # an explicit one-byte empty string ("\0") is also empty
    one = data[:-6] + b"\x00\x01\x00" + b"\x00\x00\x00\x00"
    assert parse_key_method_2(one, from_client=False) == server_msg()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:4],  # too short
        lambda d: d[:68],  # fixed part cut
        lambda d: d[:69],  # no options string at all
        lambda d: b"\x00\x00\x00\x01" + d[4:],  # not a zero word
        lambda d: d[:4] + b"\x01" + d[5:],  # key method 1
        lambda d: d[:70],  # truncated length
        lambda d: d[:100],  # truncated options
        lambda d: d[:69] + b"\x00\x05abcde" + d[76:],  # options without NUL
        lambda d: d[:69] + b"\x00\x05ab\x00d\x00",  # embedded NUL
        lambda d: d[:69] + b"\x02\x01" + b"a" * 512 + b"\x00",  # options over 512
        lambda d: d[:69] + b"\x00\x03\xff\xfe\x00",  # not UTF-8
        lambda d: d[:-6] + b"\x00\x09abc",  # truncated username
    ],
)
def test_malformed(mutate: object) -> None:
    data = build_key_method_2(server_msg())
    with pytest.raises(RemoteProtocolError):
        parse_key_method_2(mutate(data), from_client=False)  # type: ignore[operator]


def test_client_message_parsed_as_server_fails_cleanly() -> None:
    # the wrong role shifts every field; whatever comes out, nothing but
    # RemoteProtocolError may escape and the options must not be what was sent
    data = build_key_method_2(server_msg())
    with pytest.raises(RemoteProtocolError):
        parse_key_method_2(data, from_client=True)


def test_build_refuses_what_openvpn_cannot_read() -> None:
    with pytest.raises(LocalProtocolError):
        build_key_method_2(client_msg(options="o" * 512))  # 513 with NUL
    build_key_method_2(client_msg(options="o" * 511))
    with pytest.raises(LocalProtocolError):
        build_key_method_2(client_msg(pre_master=b"short"))
    with pytest.raises(LocalProtocolError):
        build_key_method_2(client_msg(random1=b"x"))
    with pytest.raises(LocalProtocolError):
        build_key_method_2(client_msg(options=""))
    with pytest.raises(LocalProtocolError):
        build_key_method_2(client_msg(username="a\x00b"))
    with pytest.raises(LocalProtocolError):  # the whole message must fit one 2048-byte record
        build_key_method_2(client_msg(password="p" * 1900))


text_st = st.text(
    st.characters(min_codepoint=1, max_codepoint=0x2FF, exclude_categories=["Cs"]), max_size=60
)


@given(
    pre=st.one_of(st.none(), st.binary(min_size=48, max_size=48)),
    r1=st.binary(min_size=32, max_size=32),
    r2=st.binary(min_size=32, max_size=32),
    options=text_st.filter(bool),
    username=text_st,
    password=text_st,
    peer_info=text_st,
)
def test_round_trip_property(
    pre: bytes | None,
    r1: bytes,
    r2: bytes,
    options: str,
    username: str,
    password: str,
    peer_info: str,
) -> None:
    msg = KeyMethod2(pre, r1, r2, options, username, password, peer_info)
    assert parse_key_method_2(build_key_method_2(msg), from_client=pre is not None) == msg


@given(data=st.binary(max_size=400), from_client=st.booleans())
def test_parse_never_raises_anything_else(data: bytes, from_client: bool) -> None:
    try:
        msg = parse_key_method_2(data, from_client=from_client)
    except RemoteProtocolError:
        return
    assert len(msg.random1) == 32 and len(msg.random2) == 32


@given(cut=st.integers(min_value=0, max_value=400), flip=st.integers(0, 399), bit=st.integers(0, 7))
def test_mutated_valid_message(cut: int, flip: int, bit: int) -> None:
    data = bytearray(build_key_method_2(client_msg()))
    if flip < len(data):
        data[flip] ^= 1 << bit
    try:
        parse_key_method_2(bytes(data[:cut]), from_client=True)
    except RemoteProtocolError:
        pass
