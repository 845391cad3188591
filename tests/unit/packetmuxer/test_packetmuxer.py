"""The muxer core: reset exchange, routing, session-id checks (no I/O, time injected)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trivpn.controlchannel.packet import (
    ControlPacket,
    Opcode,
    parse_control_packet,
    serialize_control_packet,
)
from trivpn.controlchannel.wrap import NoWrap
from trivpn.messages import ResetComplete
from trivpn.packetmuxer.core import PacketMuxer
from trivpn.reliabletransport.core import OutgoingPacket

CLI = bytes.fromhex("1111111111111111")
SRV = bytes.fromhex("2222222222222222")


def server_reset(acked_sid: bytes = CLI, sid: bytes = SRV) -> bytes:
    return serialize_control_packet(
        ControlPacket(Opcode.CONTROL_HARD_RESET_SERVER_V2, 0, sid, (0,), acked_sid, 0, b"")
    )


def started(now: float = 0.0) -> PacketMuxer:
    m = PacketMuxer(NoWrap(), CLI)
    m.start(now)
    return m


def test_first_reset_is_the_documented_14_bytes() -> None:
    m = started()
    (wire,) = m.datagrams_to_send(0.0)
    assert wire == bytes([0x38]) + CLI + b"\x00" + b"\x00\x00\x00\x00"


def test_reset_retransmits_with_backoff_until_answered() -> None:
    m = started()
    times = []
    now = 0.0
    while now < 40:
        if m.datagrams_to_send(now):
            times.append(now)
        now += 0.5
    assert times[:5] == [0.0, 2.0, 6.0, 14.0, 30.0]
    m.receive_datagrams([server_reset()], now)
    assert m.get_timer() is None
    assert m.datagrams_to_send(now + 100) == []


def test_server_reset_completes_and_reports_both_ids() -> None:
    m = started()
    m.datagrams_to_send(0)
    data, control = m.receive_datagrams([server_reset()], 0.1)
    assert data == [] and control == []
    assert m.events() == [ResetComplete(CLI, SRV, b"")]
    assert m.remote_session_id == SRV


def test_reset_acking_another_session_is_dropped() -> None:
    m = started()
    m.receive_datagrams([server_reset(acked_sid=b"\x09" * 8)], 0.1)
    assert not m.reset_complete
    assert m.stats.drop_session == 1


def test_data_before_reset_is_dropped_and_after_is_routed() -> None:
    m = started()
    data_pkt = b"\x48\x00\x00\x00" + b"\x00" * 30
    assert m.receive_datagrams([data_pkt], 0) == ([], [])
    assert m.stats.drop_early == 1
    m.receive_datagrams([server_reset()], 0.1)
    data, control = m.receive_datagrams([data_pkt, data_pkt], 0.2)
    assert data == [data_pkt, data_pkt] and control == []


def test_control_from_another_session_is_dropped() -> None:
    m = started()
    m.receive_datagrams([server_reset()], 0.1)
    other = serialize_control_packet(ControlPacket(Opcode.CONTROL_V1, 0, b"\x07" * 8, (), None, 1, b"x"))
    mine = serialize_control_packet(ControlPacket(Opcode.CONTROL_V1, 0, SRV, (), None, 1, b"x"))
    _, control = m.receive_datagrams([other, mine], 0.2)
    assert [p.session_id for p in control] == [SRV]
    assert m.stats.drop_session == 1


def test_wrap_control_adds_session_ids_only_with_acks() -> None:
    m = started()
    m.receive_datagrams([server_reset()], 0.1)
    out = m.wrap_control(
        0,
        [
            OutgoingPacket(Opcode.CONTROL_V1, (0,), 1, b"hello"),
            OutgoingPacket(Opcode.ACK_V1, (1, 2), None, b""),
            OutgoingPacket(Opcode.CONTROL_V1, (), 3, b"x"),
        ],
        0.2,
    )
    p1, p2, p3 = (parse_control_packet(w) for w in out)
    assert (p1.session_id, p1.remote_session_id, p1.acks, p1.message_id) == (CLI, SRV, (0,), 1)
    assert p2.opcode is Opcode.ACK_V1 and p2.message_id is None and p2.acks == (1, 2)
    assert p3.remote_session_id is None and p3.acks == ()


@given(st.lists(st.binary(max_size=120), max_size=30))
def test_hostile_datagrams_never_raise(blobs: list[bytes]) -> None:
    m = started()
    m.receive_datagrams([server_reset()], 0.0)
    data, control = m.receive_datagrams(blobs, 1.0)
    for p in control:
        assert p.session_id == SRV
    for d in data:
        assert d[0] >> 3 in (6, 9)


# ---- tls-crypt-v2 ---------------------------------------------------------------------

WKC = b"\xaa" * 40 + (42).to_bytes(2, "big")


def test_v3_reset_carries_the_wkc_after_the_wrapped_packet() -> None:
    m = PacketMuxer(NoWrap(), CLI, wkc=WKC)
    m.start(0.0)
    (wire,) = m.datagrams_to_send(0.0)
    assert wire.endswith(WKC)
    pkt = parse_control_packet(wire[: -len(WKC)])
    assert pkt.opcode is Opcode.CONTROL_HARD_RESET_CLIENT_V3 and pkt.message_id == 0


def _reset_with_tlvs(tlvs: bytes) -> bytes:
    return serialize_control_packet(
        ControlPacket(Opcode.CONTROL_HARD_RESET_SERVER_V2, 0, SRV, (0,), CLI, 0, tlvs)
    )


def test_resend_wkc_turns_message_1_into_wkc_v1_and_holds_bare_acks() -> None:
    m = PacketMuxer(NoWrap(), CLI, wkc=WKC)
    m.start(0.0)
    # unknown TLV type 7 first (skipped), then EARLY_NEG_FLAGS = RESEND_WKC
    m.receive_datagrams([_reset_with_tlvs(b"\x00\x07\x00\x01z" + b"\x00\x01\x00\x02\x00\x01")], 0.1)
    assert m.resend_wkc
    # a bare ACK before message 1 would be unverifiable for the stateless server: held back
    assert m.wrap_control(0, [OutgoingPacket(Opcode.ACK_V1, (0,), None, b"")], 0.2) == []
    (wire,) = m.wrap_control(0, [OutgoingPacket(Opcode.CONTROL_V1, (0,), 1, b"hello")], 0.3)
    assert wire.endswith(WKC)
    pkt = parse_control_packet(wire[: -len(WKC)])
    assert pkt.opcode is Opcode.CONTROL_WKC_V1 and pkt.message_id == 1 and pkt.acks == (0,)
    # afterwards everything is ordinary again
    (ack,) = m.wrap_control(0, [OutgoingPacket(Opcode.ACK_V1, (1,), None, b"")], 0.4)
    assert parse_control_packet(ack).opcode is Opcode.ACK_V1


def test_without_resend_wkc_message_1_is_plain() -> None:
    m = PacketMuxer(NoWrap(), CLI, wkc=WKC)
    m.start(0.0)
    m.receive_datagrams([_reset_with_tlvs(b"")], 0.1)
    assert not m.resend_wkc
    (wire,) = m.wrap_control(0, [OutgoingPacket(Opcode.CONTROL_V1, (0,), 1, b"hello")], 0.3)
    assert parse_control_packet(wire).opcode is Opcode.CONTROL_V1


def test_dynamic_wrap_is_used_for_key_ids_above_zero_only() -> None:
    m = started()
    m.receive_datagrams([server_reset()], 0.1)
    m.set_dynamic_wrap(bytes(range(256)), now_unix=1_700_000_000)
    (k0,) = m.wrap_control(0, [OutgoingPacket(Opcode.CONTROL_V1, (), 2, b"x")], 0.2)
    (k1,) = m.wrap_control(1, [OutgoingPacket(Opcode.CONTROL_SOFT_RESET_V1, (), 0, b"")], 0.2)
    assert parse_control_packet(k0).payload == b"x"  # key 0: the configured (no) wrapping
    assert len(k1) == len(serialize_control_packet(
        ControlPacket(Opcode.CONTROL_SOFT_RESET_V1, 1, CLI, (), None, 0, b"")
    )) + 40  # key 1: tls-crypt (replay id 8 + tag 32)
