"""IP/ICMP helpers: checksums are verified with an independent (naive) implementation."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivpn.errors import LocalProtocolError
from trivpn.tun.ip import (
    EchoReply,
    build_echo_request,
    echo_reply_to,
    internet_checksum,
    ip_destination,
    ip_version,
    parse_echo_reply,
    parse_echo_request,
)


def naive_sum(data: bytes) -> int:
    """One's-complement sum, written the slow obvious way (RFC 1071 §4.1)."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def naive_checksum(data: bytes) -> int:
    return ~naive_sum(data) & 0xFFFF


def v6_pseudo(src: str, dst: str, length: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + length.to_bytes(4, "big")
        + b"\x00\x00\x00\x3a"
    )


def hand_v4_reply(src: str, dst: str, ident: int, seq: int, payload: bytes, ttl: int = 63) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 0, 0, 0, ident, seq) + payload)
    icmp[2:4] = naive_checksum(bytes(icmp)).to_bytes(2, "big")
    hdr = bytearray(
        struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(icmp), 0x1234, 0x4000, ttl, 1, 0)
        + ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
    )
    hdr[10:12] = naive_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr + icmp)


def hand_v6_reply(
    src: str, dst: str, ident: int, seq: int, payload: bytes, hops: int = 62
) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 129, 0, 0, ident, seq) + payload)
    csum = naive_checksum(v6_pseudo(src, dst, len(icmp)) + bytes(icmp))
    icmp[2:4] = csum.to_bytes(2, "big")
    hdr = struct.pack("!IHBB", 0x60000000, len(icmp), 58, hops)
    hdr += ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed
    return hdr + bytes(icmp)


def test_checksum_known_vector() -> None:
    # The classic IPv4 header example (checksum field zeroed; the right value is 0xb861).
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    assert naive_checksum(header) == 0xB861


@given(st.binary(max_size=300))
def test_checksum_matches_naive(data: bytes) -> None:
    assert internet_checksum(data) == naive_checksum(data)


def test_build_v4_echo_request_layout_and_checksums() -> None:
    pkt = build_echo_request("10.8.0.2", "10.8.0.1", 0xBEEF, 7, b"hello!")
    assert len(pkt) == 20 + 8 + 6
    ver_ihl, _tos, total, _id, frag, ttl, proto = struct.unpack("!BBHHHBB", pkt[:10])
    assert (ver_ihl, total, frag, ttl, proto) == (0x45, len(pkt), 0, 64, 1)
    assert pkt[12:16] == bytes([10, 8, 0, 2]) and pkt[16:20] == bytes([10, 8, 0, 1])
    assert naive_sum(pkt[:20]) == 0xFFFF  # header checksum valid
    icmp = pkt[20:]
    assert icmp[0] == 8 and icmp[1] == 0
    assert struct.unpack("!HH", icmp[4:8]) == (0xBEEF, 7)
    assert icmp[8:] == b"hello!"
    assert naive_sum(icmp) == 0xFFFF  # ICMP checksum valid


def test_build_v4_odd_payload_checksum() -> None:
    pkt = build_echo_request("192.0.2.1", "198.51.100.9", 1, 65535, b"abc")
    assert naive_sum(pkt[:20]) == 0xFFFF
    assert naive_sum(pkt[20:]) == 0xFFFF


def test_build_v6_echo_request_layout_and_checksum() -> None:
    src, dst = "fd00::2", "2001:db8::1"
    pkt = build_echo_request(src, dst, 0x0102, 0x0304, b"xyz")
    assert len(pkt) == 40 + 8 + 3
    first, plen, nh, hops = struct.unpack("!IHBB", pkt[:8])
    assert (first >> 28, plen, nh, hops) == (6, 11, 58, 64)
    assert pkt[8:24] == ipaddress.IPv6Address(src).packed
    assert pkt[24:40] == ipaddress.IPv6Address(dst).packed
    icmp = pkt[40:]
    assert icmp[0] == 128 and icmp[1] == 0
    assert struct.unpack("!HH", icmp[4:8]) == (0x0102, 0x0304)
    # The ICMPv6 checksum covers the pseudo-header; without it, it would not verify.
    assert naive_sum(v6_pseudo(src, dst, len(icmp)) + icmp) == 0xFFFF
    assert naive_sum(icmp) != 0xFFFF


@pytest.mark.parametrize(
    "src,dst,ident,seq",
    [
        ("10.0.0.1", "fd00::1", 1, 1),
        ("nonsense", "10.0.0.1", 1, 1),
        ("10.0.0.1", "10.0.0.2", 70000, 1),
    ],
)
def test_build_rejects_misuse(src: str, dst: str, ident: int, seq: int) -> None:
    with pytest.raises(LocalProtocolError):
        build_echo_request(src, dst, ident, seq)


def test_parse_hand_built_v4_reply() -> None:
    pkt = hand_v4_reply("10.8.0.1", "10.8.0.2", 0xBEEF, 9, b"ping data", ttl=61)
    assert parse_echo_reply(pkt) == EchoReply("10.8.0.1", "10.8.0.2", 0xBEEF, 9, b"ping data", 61)


def test_parse_hand_built_v6_reply() -> None:
    pkt = hand_v6_reply("2001:db8::1", "fd00::2", 3, 4, b"p6", hops=60)
    assert parse_echo_reply(pkt) == EchoReply("2001:db8::1", "fd00::2", 3, 4, b"p6", 60)


def test_parse_ignores_trailing_bytes_beyond_total_length() -> None:
    pkt = hand_v4_reply("10.8.0.1", "10.8.0.2", 1, 2, b"abc") + b"\x00\x00"
    reply = parse_echo_reply(pkt)
    assert reply is not None and reply.payload == b"abc"


def test_parse_v4_with_ip_options() -> None:
    # IHL 6: one word of options (NOPs) before the ICMP message.
    icmp = bytearray(struct.pack("!BBHHH", 0, 0, 0, 5, 6) + b"o")
    icmp[2:4] = naive_checksum(bytes(icmp)).to_bytes(2, "big")
    hdr = bytearray(struct.pack("!BBHHHBBH", 0x46, 0, 24 + len(icmp), 0, 0, 64, 1, 0))
    hdr += bytes([10, 0, 0, 1, 10, 0, 0, 2]) + b"\x01\x01\x01\x00"
    hdr[10:12] = naive_checksum(bytes(hdr)).to_bytes(2, "big")
    reply = parse_echo_reply(bytes(hdr + icmp))
    assert reply == EchoReply("10.0.0.1", "10.0.0.2", 5, 6, b"o", 64)


def _corrupt(pkt: bytes, index: int) -> bytes:
    return pkt[:index] + bytes([pkt[index] ^ 0x01]) + pkt[index + 1 :]


V4_REPLY = hand_v4_reply("10.8.0.1", "10.8.0.2", 0xBEEF, 9, b"ping data")
V6_REPLY = hand_v6_reply("2001:db8::1", "fd00::2", 3, 4, b"p6")


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x45",
        b"\x00" * 60,
        b"\x55" + V4_REPLY[1:],  # version 5
        V4_REPLY[:27],  # truncated ICMP header
        V4_REPLY[:-1],  # shorter than total length
        _corrupt(V4_REPLY, 10),  # bad IP header checksum
        _corrupt(V4_REPLY, 30),  # bad ICMP checksum
        build_echo_request("10.8.0.2", "10.8.0.1", 1, 1),  # a request, not a reply
        V6_REPLY[:47],
        V6_REPLY[:-1],
        _corrupt(V6_REPLY, 8),  # source changed: pseudo-header checksum fails
        _corrupt(V6_REPLY, 45),  # identifier changed
        build_echo_request("fd00::2", "fd00::1", 1, 1),
    ],
)
def test_parse_rejects(packet: bytes) -> None:
    assert parse_echo_reply(packet) is None


def test_parse_rejects_fragment_and_other_protocols() -> None:
    frag = bytearray(V4_REPLY)
    frag[6:8] = b"\x20\x00"  # MF set
    frag[10:12] = b"\x00\x00"
    frag[10:12] = naive_checksum(bytes(frag[:20])).to_bytes(2, "big")
    assert parse_echo_reply(bytes(frag)) is None
    udp = bytearray(V4_REPLY)
    udp[9] = 17
    udp[10:12] = b"\x00\x00"
    udp[10:12] = naive_checksum(bytes(udp[:20])).to_bytes(2, "big")
    assert parse_echo_reply(bytes(udp)) is None
    v6_udp = bytearray(V6_REPLY)
    v6_udp[6] = 17
    assert parse_echo_reply(bytes(v6_udp)) is None


@given(st.binary(max_size=120))
def test_parse_never_raises_on_garbage(data: bytes) -> None:
    for candidate in (data, b"\x45" + data, b"\x60" + data):
        result = parse_echo_reply(candidate)
        assert result is None or isinstance(result, EchoReply)
        assert ip_version(candidate) in (None, 4, 6)
        dst = ip_destination(candidate)
        assert dst is None or ipaddress.ip_address(dst).version == ip_version(candidate)


@given(st.sampled_from([V4_REPLY, V6_REPLY]), st.data())
def test_parse_mutated_replies_never_raise(pkt: bytes, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(pkt) - 1))
    value = data.draw(st.integers(0, 255))
    mutated = pkt[:index] + bytes([value]) + pkt[index + 1 :]
    result = parse_echo_reply(mutated)
    assert result is None or isinstance(result, EchoReply)
    if value == pkt[index]:
        assert result is not None


@given(
    st.sampled_from([("10.1.2.3", "192.0.2.77"), ("fd00::5", "2001:db8:ffff::1")]),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.binary(max_size=64),
)
def test_round_trip_through_a_responder(
    addrs: tuple[str, str], ident: int, seq: int, payload: bytes
) -> None:
    """Turn our request into a reply the way a host would, then parse it."""
    src, dst = addrs
    req = build_echo_request(src, dst, ident, seq, payload)
    if ip_version(req) == 4:
        reply = hand_v4_reply(dst, src, ident, seq, req[28:])
    else:
        reply = hand_v6_reply(dst, src, ident, seq, req[48:])
    parsed = parse_echo_reply(reply)
    assert parsed is not None
    assert (parsed.src, parsed.dst, parsed.ident, parsed.seq, parsed.payload) == (
        str(ipaddress.ip_address(dst)),
        str(ipaddress.ip_address(src)),
        ident,
        seq,
        payload,
    )


def test_ip_version_and_destination() -> None:
    v4 = build_echo_request("10.0.0.1", "10.0.0.99", 1, 1)
    v6 = build_echo_request("fd00::1", "fd00::99", 1, 1)
    assert ip_version(v4) == 4 and ip_destination(v4) == "10.0.0.99"
    assert ip_version(v6) == 6 and ip_destination(v6) == "fd00::99"
    assert ip_version(b"") is None and ip_destination(b"") is None
    assert ip_version(b"\x50") is None and ip_destination(b"\x50" * 40) is None
    assert ip_version(v4[:19]) == 4 and ip_destination(v4[:19]) is None
    assert ip_destination(v6[:39]) is None


@pytest.mark.parametrize(("src", "dst"), [("10.8.0.2", "10.8.0.1"), ("fd00::2", "fd00::1")])
def test_echo_reply_to_a_request_is_the_reply_a_host_sends(src: str, dst: str) -> None:
    request = build_echo_request(src, dst, 0x1234, 7, b"abc")
    req = parse_echo_request(request)
    assert req is not None and (req.src, req.dst, req.ident, req.seq, req.payload) == (src, dst, 0x1234, 7, b"abc")
    assert parse_echo_reply(request) is None
    reply = echo_reply_to(request)
    assert reply is not None
    assert len(reply) == len(request)
    got = parse_echo_reply(reply)  # checksums verified by the parser
    assert got is not None and (got.src, got.dst, got.ident, got.seq, got.payload) == (dst, src, 0x1234, 7, b"abc")
    assert echo_reply_to(reply) is None  # a reply is never answered


@given(st.binary(max_size=80))
def test_echo_reply_to_never_raises_on_garbage(packet: bytes) -> None:
    out = echo_reply_to(packet)
    assert out is None or parse_echo_reply(out) is not None
