"""`trivpn.tun.gro.coalesce`: what it merges, what it must not, and that splitting its
writes the way the kernel's GSO does gives back every packet's bytes in order."""

from __future__ import annotations

import struct

from helpers.tcpseg import csum, seg
from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.tun import gro


def flat(write: gro.Write) -> bytes:
    return b"".join(bytes(b) for b in write[0])


def split(wire: bytes) -> list[tuple[object, ...]]:
    """What the kernel's GSO makes of one write, as comparable tuples (addresses, ports,
    seq, ack, flags, payload) — IP ids and checksums are the kernel's to fill."""
    flags_, gso_type, hdr_len, gso_size, cstart, coff = struct.unpack_from("=BBHHHH", wire)
    p = wire[gro.VNET_HDR_LEN:]
    if gso_type == gro.GSO_NONE:
        assert flags_ == 0
        return [fields(p)]
    assert flags_ == gro.NEEDS_CSUM and coff == 16
    v6 = p[0] >> 4 == 6
    assert cstart == (40 if v6 else 20)
    assert gso_type == (gro.GSO_TCPV6 if v6 else gro.GSO_TCPV4)
    head, body = p[:hdr_len], p[hdr_len:]
    if not v6:
        assert struct.unpack_from("!H", p, 2)[0] == len(p)
        assert csum(head[:20]) == 0xFFFF  # a valid IPv4 header checksum
        pseudo = csum(head[12:20] + struct.pack("!xBH", 6, len(p) - 20))
    else:
        assert struct.unpack_from("!H", p, 4)[0] == len(p) - 40
        pseudo = csum(head[8:40] + struct.pack("!IxxxB", len(p) - 40, 6))
    assert struct.unpack_from("!H", head, cstart + 16)[0] == pseudo
    out = []
    seq0 = struct.unpack_from("!I", head, cstart + 4)[0]
    last_flags = head[cstart + 13]
    pieces = [body[i:i + gso_size] for i in range(0, len(body), gso_size)]
    for k, piece in enumerate(pieces):
        flags = last_flags if k == len(pieces) - 1 else last_flags & ~0x08
        f = fields(head + piece)
        out.append((*f[:3], (seq0 + k * gso_size) & 0xFFFFFFFF, f[4], flags, piece))
    return out


def fields(p: bytes) -> tuple[object, ...]:
    v6 = p[0] >> 4 == 6
    off = 40 if v6 else 20
    if (p[6] if v6 else p[9]) != 6:
        return ("raw", p)
    sport, dport, seq, ack, _o, flags = struct.unpack_from("!HHIIBB", p, off)
    thl = (p[off + 12] >> 4) * 4
    return (v6, sport, dport, seq, ack, flags, p[off + thl:])


def check_roundtrip(packets: list[bytes]) -> list[gro.Write]:
    writes = gro.coalesce(packets)
    assert sum(w[1] for w in writes) == len(packets)
    assert sum(w[2] for w in writes) == sum(map(len, packets))
    got = [t for w in writes for t in split(flat(w))]
    assert got == [fields(p) for p in packets]
    for w in writes:
        assert len(flat(w)) - gro.VNET_HDR_LEN <= 65535 + (40 if flat(w)[10] >> 4 == 6 else 0)
    return writes


def test_a_run_of_full_segments_is_one_write() -> None:
    packets = [seg(100 + i * 1000, bytes([i]) * 1000) for i in range(10)]
    writes = check_roundtrip(packets)
    assert [w[1] for w in writes] == [10]


def test_ipv6_run_merges_too() -> None:
    packets = [seg(5 + i * 1200, bytes([i]) * 1200, v6=True) for i in range(5)]
    assert [w[1] for w in check_roundtrip(packets)] == [5]


def test_short_segment_and_psh_end_a_group() -> None:
    packets = [seg(0, b"a" * 1000), seg(1000, b"b" * 500), seg(1500, b"c" * 1000),
               seg(2500, b"d" * 1000, flags=0x18), seg(3500, b"e" * 1000)]
    assert [w[1] for w in check_roundtrip(packets)] == [2, 2, 1]


def test_what_never_merges() -> None:
    base = seg(0, b"x" * 1000)
    cases = [
        seg(1000, b"y" * 1000, ack=8),  # another ACK number
        seg(1000, b"y" * 1000, sport=1001),  # another flow
        seg(2000, b"y" * 1000),  # a gap
        seg(1000, b"y" * 1000, flags=0x11),  # FIN
        seg(1000, b"y" * 1000, flags=0x90),  # CWR
        seg(1000, b"y" * 1000, frag=0),  # DF differs
        seg(1000, b"y" * 1000, tos=1),  # ECN / TOS differs
        seg(1000, b"y" * 1000, opts=b"\x01\x01\x01\x01"),  # options differ
        seg(1000, b"y" * 1001),  # longer than the group's segment size
        seg(1000, b""),  # no payload
    ]
    for other in cases:
        writes = check_roundtrip([base, other])
        assert [w[1] for w in writes] == [1, 1], other


def test_fragments_options_and_other_protocols_pass_alone() -> None:
    frag = bytearray(seg(0, b"x" * 1000))
    frag[6:8] = b"\x20\x00"  # MF
    udp = bytearray(seg(0, b"u" * 100))
    udp[9] = 17
    packets = [seg(0, b"a" * 100), bytes(frag), bytes(udp), b"\x45", b"\x60" * 50, b"junk" * 20]
    writes = gro.coalesce(packets)
    assert [w[1] for w in writes] == [1] * len(packets)
    assert [flat(w)[gro.VNET_HDR_LEN:] for w in writes] == packets


def test_a_group_never_exceeds_64k() -> None:
    packets = [seg(i * 1400, b"z" * 1400) for i in range(100)]
    writes = check_roundtrip(packets)
    assert len(writes) == 3 and max(w[1] for w in writes) == 46


def test_sequence_numbers_wrap() -> None:
    packets = [seg(0xFFFFFFFF - 1500 + i * 1000, b"w" * 1000) for i in range(4)]
    assert [w[1] for w in check_roundtrip(packets)] == [4]


def test_twelve_byte_headers() -> None:
    packets = [seg(i * 100, b"q" * 100) for i in range(3)]
    writes = gro.coalesce(packets, 12)
    assert all(len(bytes(w[0][0])) == 12 for w in writes)


_segment = st.tuples(
    st.sampled_from([0, 1]),  # flow
    st.integers(0, 3),  # how the sequence number continues (0: in order)
    st.integers(0, 1400),  # payload length
    st.sampled_from([0x10, 0x10, 0x10, 0x18, 0x11]),
    st.booleans(),  # IPv6
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_segment, max_size=80))
def test_splitting_the_writes_gives_back_every_packet(spec: list[tuple[int, int, int, int, bool]]) -> None:
    seqs = {0: 0, 1: 5000}
    packets = []
    for flow, jump, size, flags, v6 in spec:
        seq = seqs[flow] + (0 if jump == 0 else jump * 777)
        packets.append(seg(seq, bytes([flow]) * size, flags=flags, v6=v6, sport=1000 + flow))
        seqs[flow] = seq + size
    check_roundtrip(packets)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=120),
    st.builds(lambda i, at: bytes(x ^ (0xFF if k == at else 0)
                                  for k, x in enumerate(seg(i * 60, b"p" * 60))),
              st.integers(0, 3), st.integers(0, 99)),
), max_size=40))
def test_garbage_and_mutated_headers_never_raise(packets: list[bytes]) -> None:
    """Whatever a peer sends (it reaches us only after the AEAD, but a peer may be hostile):
    every packet is written exactly once, nothing raises, no write exceeds the IP limit."""
    packets = [p for p in packets if p]
    writes = gro.coalesce(packets)
    assert sum(w[1] for w in writes) == len(packets)
    assert sum(len(flat(w)) - gro.VNET_HDR_LEN for w in writes) <= sum(map(len, packets))
