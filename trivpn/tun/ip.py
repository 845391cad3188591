"""Minimal IPv4/IPv6 and ICMP echo helpers.

`trivpn ping` runs over a userspace TUN, where no kernel builds or answers ICMP for us, so
we build echo requests and recognise echo replies ourselves. Everything here is pure and
works on bytes; parsers never raise on malformed input (they return None instead), because
whatever comes out of the tunnel is untrusted.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from enum import IntEnum

from trivpn.errors import LocalProtocolError
from trivpn.records import dataclass

IPV4_HEADER_LEN = 20
IPV6_HEADER_LEN = 40
ICMP_ECHO_HEADER_LEN = 8
IP_MAXPACKET = 65535
DEFAULT_TTL = 64

_IPV4_HDR = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HDR = struct.Struct("!IHBB16s16s")
_ECHO_HDR = struct.Struct("!BBHHH")


class IpProto(IntEnum):
    """IANA protocol numbers we care about."""

    ICMP = 1
    ICMPV6 = 58


class IcmpType(IntEnum):
    ECHO_REPLY = 0
    ECHO_REQUEST = 8


class Icmp6Type(IntEnum):
    ECHO_REQUEST = 128
    ECHO_REPLY = 129


@dataclass(frozen=True, slots=True)
class EchoReply:
    """A parsed ICMP/ICMPv6 echo reply; `ttl` is the TTL or hop limit as received."""

    src: str
    dst: str
    ident: int
    seq: int
    payload: bytes
    ttl: int


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """RFC 1071 one's-complement checksum (the value to store in the header field)."""
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = initial + sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header_sum(src: bytes, dst: bytes, length: int, next_header: int) -> int:
    """Sum of the IPv6 pseudo-header (RFC 8200 §8.1), folded in by internet_checksum."""
    pseudo = src + dst + struct.pack("!IxxxB", length, next_header)
    return sum(struct.unpack("!20H", pseudo))


def build_echo_request(src: str, dst: str, ident: int, seq: int, payload: bytes = b"") -> bytes:
    """An IPv4+ICMP or IPv6+ICMPv6 echo request (family taken from the addresses)."""
    return _build_echo(src, dst, ident, seq, payload, reply=False)


def echo_reply_to(packet: bytes) -> bytes | None:
    """The echo reply a host owes for `packet`, or None if it is no valid echo request.

    For userspace peers that play the far host (the rootless loopback server in
    `trivpn.testing`): source and destination swapped, same ident, seq and payload."""
    req = parse_echo_request(packet)
    if req is None:
        return None
    return _build_echo(req.dst, req.src, req.ident, req.seq, req.payload, reply=True)


def _build_echo(src: str, dst: str, ident: int, seq: int, payload: bytes, *, reply: bool) -> bytes:
    try:
        src_ip = ipaddress.ip_address(src)
        dst_ip = ipaddress.ip_address(dst)
    except ValueError as exc:
        raise LocalProtocolError(str(exc)) from None
    if src_ip.version != dst_ip.version:
        raise LocalProtocolError(f"address families differ: {src} and {dst}")
    if not (0 <= ident <= 0xFFFF and 0 <= seq <= 0xFFFF):
        raise LocalProtocolError("ident and seq must fit in 16 bits")
    if src_ip.version == 4:
        total = IPV4_HEADER_LEN + ICMP_ECHO_HEADER_LEN + len(payload)
        if total > IP_MAXPACKET:
            raise LocalProtocolError("payload too large for one IP packet")
        kind = IcmpType.ECHO_REPLY if reply else IcmpType.ECHO_REQUEST
        icmp = bytearray(_ECHO_HDR.pack(kind, 0, 0, ident, seq) + payload)
        struct.pack_into("!H", icmp, 2, internet_checksum(icmp))
        header = bytearray(
            _IPV4_HDR.pack(
                0x45, 0, total, ident, 0, DEFAULT_TTL, IpProto.ICMP, 0, src_ip.packed, dst_ip.packed
            )
        )
        struct.pack_into("!H", header, 10, internet_checksum(header))
        return bytes(header + icmp)
    plen = ICMP_ECHO_HEADER_LEN + len(payload)
    if plen > IP_MAXPACKET:
        raise LocalProtocolError("payload too large for one IP packet")
    kind6 = Icmp6Type.ECHO_REPLY if reply else Icmp6Type.ECHO_REQUEST
    icmp = bytearray(_ECHO_HDR.pack(kind6, 0, 0, ident, seq) + payload)
    csum = internet_checksum(
        icmp, _pseudo_header_sum(src_ip.packed, dst_ip.packed, plen, IpProto.ICMPV6)
    )
    struct.pack_into("!H", icmp, 2, csum)
    header6 = _IPV6_HDR.pack(
        6 << 28, plen, IpProto.ICMPV6, DEFAULT_TTL, src_ip.packed, dst_ip.packed
    )
    return header6 + bytes(icmp)


def parse_echo_reply(packet: bytes) -> EchoReply | None:
    """Return the echo reply carried by `packet`, or None for anything else or anything broken."""
    return _parse_echo(packet, request=False)


def parse_echo_request(packet: bytes) -> EchoReply | None:
    """Return the echo request carried by `packet` (same fields as a reply), or None."""
    return _parse_echo(packet, request=True)


def _parse_echo(packet: bytes, *, request: bool) -> EchoReply | None:
    try:
        version = ip_version(packet)
        if version == 4:
            return _parse_v4_echo(packet, IcmpType.ECHO_REQUEST if request else IcmpType.ECHO_REPLY)
        if version == 6:
            return _parse_v6_echo(packet, Icmp6Type.ECHO_REQUEST if request else Icmp6Type.ECHO_REPLY)
    except (struct.error, ValueError, IndexError):  # defensive: the checks below should cover all
        return None
    return None


def _parse_v4_echo(packet: bytes, want: int) -> EchoReply | None:
    if len(packet) < IPV4_HEADER_LEN:
        return None
    ver_ihl, _tos, total, _id, frag, ttl, proto, _csum, src, dst = _IPV4_HDR.unpack_from(packet)
    ihl = (ver_ihl & 0x0F) * 4
    if ihl < IPV4_HEADER_LEN or total < ihl + ICMP_ECHO_HEADER_LEN or total > len(packet):
        return None
    if proto != IpProto.ICMP or frag & 0x3FFF:  # fragments (MF set or offset) are not handled
        return None
    if internet_checksum(memoryview(packet)[:ihl]) != 0:
        return None
    icmp = memoryview(packet)[ihl:total]
    if internet_checksum(icmp) != 0:
        return None
    icmp_type, code, _c, ident, seq = _ECHO_HDR.unpack_from(icmp)
    if icmp_type != want or code != 0:
        return None
    return EchoReply(
        socket.inet_ntop(socket.AF_INET, src),
        socket.inet_ntop(socket.AF_INET, dst),
        ident,
        seq,
        bytes(icmp[ICMP_ECHO_HEADER_LEN:]),
        ttl,
    )


def _parse_v6_echo(packet: bytes, want: int) -> EchoReply | None:
    if len(packet) < IPV6_HEADER_LEN:
        return None
    _vtf, plen, next_header, hop_limit, src, dst = _IPV6_HDR.unpack_from(packet)
    # Extension headers are not followed: echo replies to our requests never carry them.
    if next_header != IpProto.ICMPV6 or plen < ICMP_ECHO_HEADER_LEN:
        return None
    if IPV6_HEADER_LEN + plen > len(packet):
        return None
    icmp = memoryview(packet)[IPV6_HEADER_LEN : IPV6_HEADER_LEN + plen]
    if internet_checksum(icmp, _pseudo_header_sum(src, dst, plen, IpProto.ICMPV6)) != 0:
        return None
    icmp_type, code, _c, ident, seq = _ECHO_HDR.unpack_from(icmp)
    if icmp_type != want or code != 0:
        return None
    return EchoReply(
        socket.inet_ntop(socket.AF_INET6, src),
        socket.inet_ntop(socket.AF_INET6, dst),
        ident,
        seq,
        bytes(icmp[ICMP_ECHO_HEADER_LEN:]),
        hop_limit,
    )


def ip_version(packet: bytes) -> int | None:
    """4 or 6 from the first nibble; None for empty packets or any other version."""
    if not packet:
        return None
    version = packet[0] >> 4
    return version if version in (4, 6) else None


def ip_destination(packet: bytes) -> str | None:
    """The destination address as text, or None if the packet is too short or not IP."""
    version = ip_version(packet)
    if version == 4 and len(packet) >= IPV4_HEADER_LEN:
        return socket.inet_ntop(socket.AF_INET, packet[16:20])
    if version == 6 and len(packet) >= IPV6_HEADER_LEN:
        return socket.inet_ntop(socket.AF_INET6, packet[24:40])
    return None


#: ICMPv6 destination unreachable, code 0 "no route to destination" (RFC 4443 §3.1).
ICMP6_DEST_UNREACH = 1
ICMP6_NO_ROUTE = 0
#: An ICMPv6 error must fit the IPv6 minimum MTU (RFC 4443 §2.4 (c)).
ICMP6_ERROR_MAX = 1280
_ICMP6_ERROR_TYPES = range(0, 128)  # types below 128 are errors (RFC 4443 §2.1)


def icmp6_no_route(packet: bytes, source: str) -> bytes | None:
    """The ICMPv6 "no route to destination" answer to an IPv6 packet (block-ipv6).

    None when no answer may be sent (RFC 4443 §2.4 (e)): not IPv6, too short, an ICMPv6
    error itself, from the unspecified or a multicast source, or to a multicast group. The answer carries as
    much of the packet as fits in 1280 bytes and comes from `source`.
    """
    if ip_version(packet) != 6 or len(packet) < IPV6_HEADER_LEN:
        return None
    orig_src = packet[8:24]
    if orig_src == bytes(16) or orig_src[0] == 0xFF or packet[24] == 0xFF:
        return None  # from nobody, from a group, or to a group (router solicitations, MLD)
    if packet[6] == IpProto.ICMPV6 and len(packet) > IPV6_HEADER_LEN:
        if packet[IPV6_HEADER_LEN] in _ICMP6_ERROR_TYPES:
            return None
    src = ipaddress.IPv6Address(source).packed
    quoted = packet[: ICMP6_ERROR_MAX - IPV6_HEADER_LEN - 8]
    length = 8 + len(quoted)
    body = struct.pack("!BBHI", ICMP6_DEST_UNREACH, ICMP6_NO_ROUTE, 0, 0) + quoted
    checksum = internet_checksum(body, _pseudo_header_sum(src, orig_src, length, IpProto.ICMPV6))
    body = body[:2] + struct.pack("!H", checksum) + body[4:]
    header = _IPV6_HDR.pack(6 << 28, length, IpProto.ICMPV6, 255, src, orig_src)
    return header + body
