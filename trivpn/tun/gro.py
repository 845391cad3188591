"""TUN write offload: consecutive TCP segments of one flow leave in one GSO write.

Why: writing a packet to a TUN runs the kernel's input path for it inside the `write`
(IP, TCP receive, the receiving socket's wake-up), and the receiver's TCP answers with an
ACK that the tunnel must seal, send, and the far end must open and deliver. During a bulk
download that per-packet kernel work was the client's largest cost (docs/performance.md,
issue 16). A TUN opened with `IFF_VNET_HDR` accepts a `virtio_net_hdr` in front of each
packet; with `gso_type` TCPV4/TCPV6 the kernel takes one 64 KB "super-segment" as if a NIC's
GRO had merged it, so TCP's receive path and its ACK run once per write instead of once per
segment. This is what Linux GRO does on a real NIC; here it runs in user space over each
batch the data plane is about to write.

Theory of operation (`coalesce`, pure: no IO, no clock). Walk the batch once. A packet is
*mergeable* when it is a TCP segment with data over IPv4 without options and without
fragmentation, or over IPv6 with TCP as the first next header, whose length fields match the
bytes we hold and whose TCP flags are exactly ACK or ACK|PSH. A mergeable packet joins the
open group when everything the kernel's own GRO insists on matches the group's first packet
(addresses, ports, ACK number, window, TOS/traffic class and flow label, TTL/hop limit, the
DF bit, the TCP options byte for byte), its sequence number continues the group, it is not
longer than the group's segment size, the group has not been closed (a segment shorter than
the segment size, or one with PSH, is always the last), and the whole stays within 65535
bytes. Anything else closes the open group and starts a new one, or passes through alone.
Packet order in the batch is kept: groups are emitted in the order of their first packet,
and a group never spans a packet that was not merged.

A group of one is written as it came, behind an all-zero header (the kernel checks its
checksums as usual). A larger group is written as: a header saying NEEDS_CSUM + GSO, the
first packet's IP and TCP headers with the total length, the IPv4 header checksum, the
last segment's flags and, in the TCP checksum field, the pseudo-header sum (what a NIC
driver hands the stack for a partially checksummed packet), then every segment's payload.
The segments' own TCP checksums are not re-verified: every packet written here was just
authenticated by the data channel's AEAD, exactly as WireGuard's userspace implementations
coalesce authenticated packets. Each write is a list of buffers for `os.writev`: the
payloads are sliced out of their packets once, not joined in Python (measured: `writev` of
47 buffers costs 0.7 µs where a join and a `write` cost 1.2 µs, and a bytes slice is cheaper
than a memoryview slice).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = [
    "GSO_TCPV4",
    "GSO_TCPV6",
    "NEEDS_CSUM",
    "VNET_HDR_LEN",
    "Write",
    "coalesce",
]

VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr); TUNSETVNETHDRSZ may make it 12
#: struct virtio_net_hdr in the host's byte order (a legacy TUN, as Linux opens it)
_VNET = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4

#: IPv4 header without options + the first 16 bytes of TCP
_V4 = struct.Struct("!BBHHHBBH4s4sHHIIBBH")
#: IPv6 header + the first 16 bytes of TCP
_V6 = struct.Struct("!IHBB16s16sHHIIBBH")
_ADDR6_WORDS = struct.Struct("!16H")  # both IPv6 addresses
_ACK = 0x10
_PSH = 0x08
_MAX_IP = 65535  # the IPv4 total length / IPv6 payload length field's limit

#: one `os.writev` call: the buffers, how many of the caller's packets it carries, their bytes
Write = tuple[list[bytes | bytearray | memoryview], int, int]


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def _mask(hl: int, v6: bool) -> int:
    """All ones over a header of `hl` bytes except the fields consecutive segments of one
    flow may differ in: IPv4 total length, id and header checksum (IPv6 payload length),
    TCP sequence number, the PSH flag and the TCP checksum."""
    m = bytearray(b"\xff" * hl)
    tcp = 40 if v6 else 20
    holes = [(4, 6)] if v6 else [(2, 6), (10, 12)]
    for a, b in [*holes, (tcp + 4, tcp + 8), (tcp + 16, tcp + 18)]:
        m[a:b] = bytes(b - a)
    m[tcp + 13] = 0xFF & ~_PSH
    return int.from_bytes(m, "big")


_MASKS: dict[tuple[int, bool], int] = {}
#: (length field, sequence number) of a segment, IPv4 / IPv6
_LEN_SEQ4 = struct.Struct("!2xH20xI").unpack_from
_LEN_SEQ6 = struct.Struct("!4xH38xI").unpack_from


_V4_HDR = struct.Struct("!BBHHHBBH4s4sHHIIBBHHH")  # IPv4 without options + TCP: 40 bytes
#: virtio headers by (gso type, header length, segment size, header size): a flow keeps one
_VNET_CACHE: dict[tuple[int, int, int, int], bytes] = {}


def _vnet(gso: int, hl: int, mss: int, size: int) -> bytes:
    key = (gso, hl, mss, size)
    vnet = _VNET_CACHE.get(key)
    if vnet is None:
        if len(_VNET_CACHE) > 256:
            _VNET_CACHE.clear()
        csum_start = 40 if gso == GSO_TCPV6 else 20
        vnet = _VNET.pack(NEEDS_CSUM, gso, hl, mss, csum_start, 16) + bytes(size - VNET_HDR_LEN)
        _VNET_CACHE[key] = vnet
    return vnet


def _merged(zero: bytes, first: bytes, hl: int, mss: int, total: int, flags: int, v6: bool,
            payloads: list[bytes | bytearray | memoryview], nbytes: int) -> Write:
    """One GSO write of a group of two or more: virtio header, the first segment's headers
    made to describe the whole, the payloads (`nbytes`: the group's packets' bytes)."""
    if v6:
        h = bytearray(first[:hl])
        tcp_len = hl - 40 + total
        struct.pack_into("!H", h, 4, tcp_len)
        pseudo = _fold(sum(_ADDR6_WORDS.unpack_from(h, 8)) + 6 + tcp_len)  # both addresses
        h[53] = flags
        struct.pack_into("!H", h, 56, pseudo)
        return [_vnet(GSO_TCPV6, hl, mss, len(zero)), h, *payloads], len(payloads), nbytes
    (vihl, tos, tot, ipid, frag, ttl, proto, csum, src, dst, sport, dport, seq, ack, off, _flags,
     win, _tcp_csum, urg) = _V4_HDR.unpack_from(first)
    new_tot = hl + total
    # the header checksum, updated for the new total length (RFC 1624: ~(~HC + ~m + m'))
    c = (~csum & 0xFFFF) + (~tot & 0xFFFF) + new_tot
    c = (c & 0xFFFF) + (c >> 16)
    c = (c & 0xFFFF) + (c >> 16)
    a = int.from_bytes(src, "big")
    b = int.from_bytes(dst, "big")
    ps = (a >> 16) + (a & 0xFFFF) + (b >> 16) + (b & 0xFFFF) + 6 + new_tot - 20
    ps = (ps & 0xFFFF) + (ps >> 16)
    ps = (ps & 0xFFFF) + (ps >> 16)
    hdr = _V4_HDR.pack(vihl, tos, new_tot, ipid, frag, ttl, proto, ~c & 0xFFFF, src, dst, sport,
                       dport, seq, ack, off, flags, win, ps, urg)
    if hl > 40:
        hdr += first[40:hl]
    return [_vnet(GSO_TCPV4, hl, mss, len(zero)), hdr, *payloads], len(payloads), nbytes


def coalesce(packets: Sequence[bytes], hdr_len: int = VNET_HDR_LEN) -> list[Write]:
    """The writes that deliver `packets` in order (see the module docstring).

    The open group lives in local variables (this loop runs for every packet written to
    the TUN): a segment continues it when its header, masked by `_mask`, equals the first
    segment's, and its length field, sequence number and size fit."""
    zero = bytes(hdr_len)
    if len(packets) == 1:  # nothing to merge with (a lone packet after an idle wait)
        p = packets[0]
        return [([zero, p], 1, len(p))]
    out: list[Write] = []
    append = out.append
    v4_unpack = _V4.unpack_from
    v6_unpack = _V6.unpack_from
    from_bytes = int.from_bytes
    # the open group (g_first empty: none)
    g_first = b""
    g_hl = g_mss = g_total = g_nbytes = g_next = g_key = g_mask = g_adj = g_flagpos = 0
    g_flags = 0
    g_v6 = g_open = False
    g_limit = 0
    g_len_seq = _LEN_SEQ4
    g_payloads: list[bytes | bytearray | memoryview] = []
    for p in packets:
        n = len(p)
        if g_open and n > g_hl and from_bytes(p[:g_hl], "big") & g_mask == g_key:
            length, seq = g_len_seq(p)
            plen = n - g_hl
            if (length == n - g_adj and seq == g_next and plen <= g_mss
                    and g_total + plen <= g_limit):
                if not g_payloads:  # the group's second segment: now the first's payload counts
                    g_payloads.append(g_first[g_hl:])
                g_payloads.append(p[g_hl:])
                g_total += plen
                g_nbytes += n
                g_next = (seq + plen) & 0xFFFFFFFF
                flags = p[g_flagpos]
                if plen < g_mss or flags & _PSH:
                    g_open = False
                    g_flags = flags
                continue
        # not a continuation: close the open group, then see whether `p` starts one
        if g_first:
            append(_merged(zero, g_first, g_hl, g_mss, g_total, g_flags, g_v6, g_payloads, g_nbytes)
                   if g_payloads else ([zero, g_first], 1, g_nbytes))
            g_first = b""
            g_open = False
        v6 = False
        # the cheap tests first: TCP with data (pure ACKs, the other half of every TCP
        # flow, leave here without an unpack)
        if n > 40 and p[0] == 0x45 and p[9] == 6 and n > 20 + ((p[32] >> 4) << 2):
            (_vihl, _tos, tot, _ipid, frag, _ttl, _proto, _csum, _src, _dst, _sport, _dport, seq,
             _ack, off, flags, _win) = v4_unpack(p)
            hl = 20 + ((off >> 4) << 2)
            plen = tot - hl
            ok = tot == n and plen > 0 and hl >= 40 and not frag & 0xBFFF and flags & 0xF7 == _ACK
        elif n > 60 and p[0] >> 4 == 6 and p[6] == 6 and n > 40 + ((p[52] >> 4) << 2):
            (_vtf, pl, _nh, _hop, _src, _dst, _sport, _dport, seq, _ack, off, flags,
             _win) = v6_unpack(p)
            hl = 40 + ((off >> 4) << 2)
            plen = pl + 40 - hl
            ok = pl + 40 == n and plen > 0 and hl >= 60 and flags & 0xF7 == _ACK
            v6 = True
        else:
            ok = False
        if not ok:
            append(([zero, p], 1, n))
            continue
        mask = _MASKS.get((hl, v6))
        if mask is None:
            mask = _MASKS[(hl, v6)] = _mask(hl, v6)
        g_first, g_hl, g_mss, g_total, g_nbytes = p, hl, plen, plen, n
        g_next = (seq + plen) & 0xFFFFFFFF
        g_mask = mask
        g_key = from_bytes(p[:hl], "big") & mask
        g_v6 = v6
        g_adj = 40 if v6 else 0
        g_limit = _MAX_IP - hl + g_adj
        g_len_seq = _LEN_SEQ6 if v6 else _LEN_SEQ4
        g_flagpos = (40 if v6 else 20) + 13
        g_flags = flags
        g_open = not flags & _PSH
        g_payloads = []  # filled when a second segment joins
    # the last open group, emitted as in the loop. Both emits in one place measured slower:
    # a sentinel packet at the end ~7 % on a batch of 32 ACKs, a call per group ~7 % on a
    # batch of two interleaved flows.
    if g_first:
        append(_merged(zero, g_first, g_hl, g_mss, g_total, g_flags, g_v6, g_payloads, g_nbytes)
               if g_payloads else ([zero, g_first], 1, g_nbytes))
    return out
