"""Properties of the control packet codec and of tls-auth / tls-crypt wrapping."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from trivpn.controlchannel.packet import (
    CONTROL_OPCODES,
    RELIABLE_ACK_SIZE,
    ControlPacket,
    Opcode,
    parse_control_packet,
    serialize_control_packet,
)
from trivpn.controlchannel.wrap import StaticKey, TLSAuth, TLSCrypt
from trivpn.errors import RemoteProtocolError

u32 = st.integers(0, 0xFFFFFFFF)
sids = st.binary(min_size=8, max_size=8)


@st.composite
def control_packets(draw: st.DrawFn) -> ControlPacket:
    opcode = draw(st.sampled_from(sorted(CONTROL_OPCODES)))
    acks = tuple(draw(st.lists(u32, max_size=RELIABLE_ACK_SIZE)))
    is_ack = opcode == Opcode.ACK_V1
    return ControlPacket(
        opcode=opcode,
        key_id=draw(st.integers(0, 7)),
        session_id=draw(sids),
        acks=acks,
        remote_session_id=draw(sids) if acks else None,
        message_id=None if is_ack else draw(u32),
        payload=b"" if is_ack else draw(st.binary(max_size=300)),
    )


@given(control_packets())
def test_serialize_parse_round_trip(p: ControlPacket) -> None:
    wire = serialize_control_packet(p)
    assert parse_control_packet(wire) == p


@given(st.binary(max_size=120))
def test_arbitrary_bytes_parse_exactly_or_raise_remote(data: bytes) -> None:
    try:
        p = parse_control_packet(data)
    except RemoteProtocolError:
        return
    assert serialize_control_packet(p) == data  # the codec is a bijection on what it accepts


@given(control_packets(), st.integers(0, 400))
def test_truncated_or_extended_packets_never_crash(p: ControlPacket, cut: int) -> None:
    wire = serialize_control_packet(p)
    for candidate in (wire[:cut], wire + bytes(cut % 7)):
        try:
            parse_control_packet(candidate)
        except RemoteProtocolError:
            pass


# --- wrapping --------------------------------------------------------------------------------

KEY = StaticKey(bytes((i * 37 + 11) % 256 for i in range(256)))
OTHER_KEY = StaticKey(bytes((i * 53 + 7) % 256 for i in range(256)))

# Each entry builds (client, server) wrappers; tls-auth uses the usual server 0 / client 1.
Pair = Callable[[StaticKey], tuple[TLSAuth | TLSCrypt, TLSAuth | TLSCrypt]]
PAIRS: dict[str, Pair] = {
    "tls-auth-sha1": lambda k: (TLSAuth(k, 1, timestamp=10), TLSAuth(k, 0, timestamp=20)),
    "tls-auth-sha512": lambda k: (
        TLSAuth(k, 1, "SHA512", timestamp=10),
        TLSAuth(k, 0, "SHA512", timestamp=20),
    ),
    "tls-auth-bidir": lambda k: (TLSAuth(k, None, timestamp=10), TLSAuth(k, None, timestamp=20)),
    "tls-crypt": lambda k: (TLSCrypt(k, timestamp=10), TLSCrypt(k, server=True, timestamp=20)),
}
modes = st.sampled_from(sorted(PAIRS))


@given(modes, st.lists(control_packets(), min_size=1, max_size=5), st.booleans())
def test_wrap_unwrap_round_trip_both_ways(
    mode: str, packets: list[ControlPacket], server_first: bool
) -> None:
    client, server = PAIRS[mode](KEY)
    a, b = (server, client) if server_first else (client, server)
    for p in packets:
        wire = serialize_control_packet(p)
        assert b.unwrap(a.wrap(wire, 0.0), 0.0) == wire
        assert a.unwrap(b.wrap(wire, 0.0), 0.0) == wire


@given(modes, control_packets(), st.data())
def test_any_single_bit_flip_is_rejected(mode: str, p: ControlPacket, data: st.DataObject) -> None:
    client, server = PAIRS[mode](KEY)
    wire = client.wrap(serialize_control_packet(p), 0.0)
    bit = data.draw(st.integers(0, 8 * len(wire) - 1))
    flipped = bytearray(wire)
    flipped[bit // 8] ^= 1 << (bit % 8)
    try:
        server.unwrap(bytes(flipped), 0.0)
    except RemoteProtocolError:
        pass
    else:
        raise AssertionError(f"bit {bit} flip accepted")
    # The rejected forgery left no trace: the genuine packet still goes through.
    assert server.unwrap(wire, 0.0) == serialize_control_packet(p)


@given(modes, st.lists(control_packets(), min_size=1, max_size=12), st.randoms())
def test_replayed_packets_are_rejected(
    mode: str, packets: list[ControlPacket], rnd: object
) -> None:
    client, server = PAIRS[mode](KEY)
    wires = [client.wrap(serialize_control_packet(p), 0.0) for p in packets]
    order = list(range(len(wires)))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    for i in order:  # any order within the window is fine, once
        assert server.unwrap(wires[i], 1.0) == serialize_control_packet(packets[i])
    for w in wires:
        try:
            server.unwrap(w, 1.0)
        except RemoteProtocolError:
            continue
        raise AssertionError("replayed packet accepted")


@given(modes, control_packets())
def test_wrong_key_is_rejected(mode: str, p: ControlPacket) -> None:
    client, _ = PAIRS[mode](KEY)
    _, server = PAIRS[mode](OTHER_KEY)
    try:
        server.unwrap(client.wrap(serialize_control_packet(p), 0.0), 0.0)
    except RemoteProtocolError:
        return
    raise AssertionError("packet under a different key accepted")


@given(modes, st.binary(max_size=200))
def test_unwrap_of_arbitrary_bytes_raises_only_remote(mode: str, data: bytes) -> None:
    _, server = PAIRS[mode](KEY)
    try:
        server.unwrap(data, 0.0)
    except RemoteProtocolError:
        return
    raise AssertionError("random bytes authenticated")
