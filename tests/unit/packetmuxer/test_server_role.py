"""The muxer's server role: answering the client's reset, idempotently, under every wrap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivpn.controlchannel.packet import (
    ControlPacket,
    Opcode,
    parse_control_packet,
    serialize_control_packet,
)
from trivpn.controlchannel.wrap import ControlWrap, NoWrap, StaticKey, TLSAuth, TLSCrypt
from trivpn.errors import ConfigError
from trivpn.messages import ResetComplete
from trivpn.packetmuxer.core import PacketMuxer
from trivpn.reliabletransport.core import OutgoingPacket
from trivpn.reliabletransport.service import after_hard_reset
from trivpn.testing.pki import static_key_text

CLI = bytes.fromhex("1111111111111111")
SRV = bytes.fromhex("2222222222222222")


def client_reset(sid: bytes = CLI, opcode: Opcode = Opcode.CONTROL_HARD_RESET_CLIENT_V2) -> bytes:
    return serialize_control_packet(ControlPacket(opcode, 0, sid, (), None, 0, b""))


def server(wrap: ControlWrap | None = None) -> PacketMuxer:
    m = PacketMuxer(wrap or NoWrap(), SRV, is_server=True)
    m.start(0.0)
    return m


def test_server_sends_nothing_until_the_client_resets() -> None:
    m = server()
    assert m.get_timer() is None
    assert m.datagrams_to_send(100.0) == []
    assert not m.answer_owed


def test_client_reset_is_answered_with_id_0_acking_its_0() -> None:
    m = server()
    data, control = m.receive_datagrams([client_reset()], 0.1)
    assert (data, control) == ([], [])
    assert m.events() == [ResetComplete(SRV, CLI, b"")]
    assert m.answer_owed
    (wire,) = m.datagrams_to_send(0.1)
    pkt = parse_control_packet(wire)
    assert pkt.opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2
    assert (pkt.key_id, pkt.session_id, pkt.acks, pkt.remote_session_id) == (0, SRV, (0,), CLI)
    assert pkt.message_id == 0 and pkt.payload == b""
    assert m.datagrams_to_send(10.0) == []  # no timer-driven retransmission


def test_repeated_client_reset_is_answered_again_without_a_second_event() -> None:
    m = server()
    m.receive_datagrams([client_reset()], 0.1)
    first = m.datagrams_to_send(0.1)
    m.events()
    m.receive_datagrams([client_reset(), client_reset()], 2.1)
    assert m.events() == []
    assert m.datagrams_to_send(2.1) == first  # NoWrap: the very same bytes
    assert m.stats.resets_sent == 2


def test_reset_of_another_client_is_dropped_once_a_session_exists() -> None:
    m = server()
    m.receive_datagrams([client_reset()], 0.1)
    m.datagrams_to_send(0.1)
    m.receive_datagrams([client_reset(sid=b"\x05" * 8)], 0.2)
    assert not m.answer_owed and m.stats.drop_session == 1 and m.remote_session_id == CLI


def test_v3_reset_is_refused_and_counted() -> None:
    m = server()
    m.receive_datagrams([client_reset(opcode=Opcode.CONTROL_HARD_RESET_CLIENT_V3)], 0.1)
    assert not m.reset_complete and m.stats.drop_unsupported == 1
    with pytest.raises(ConfigError, match="tls-crypt-v2"):
        PacketMuxer(NoWrap(), SRV, is_server=True, wkc=b"\x01" * 10)


def test_server_ignores_a_server_reset_and_early_control() -> None:
    m = server()
    srv_reset = serialize_control_packet(
        ControlPacket(Opcode.CONTROL_HARD_RESET_SERVER_V2, 0, b"\x03" * 8, (), None, 0, b"")
    )
    ctrl = serialize_control_packet(ControlPacket(Opcode.CONTROL_V1, 0, CLI, (), None, 1, b"x"))
    m.receive_datagrams([srv_reset, ctrl, b"\x48\x00\x00\x00" + b"\x00" * 20], 0.1)
    assert not m.reset_complete and m.stats.drop_early == 3


def test_control_after_the_reset_is_routed_and_framed_back() -> None:
    m = server()
    m.receive_datagrams([client_reset()], 0.1)
    m.datagrams_to_send(0.1)
    hello = serialize_control_packet(ControlPacket(Opcode.CONTROL_V1, 0, CLI, (0,), SRV, 1, b"hi"))
    _, control = m.receive_datagrams([hello], 0.2)
    assert [p.message_id for p in control] == [1]
    (wire,) = m.wrap_control(0, [OutgoingPacket(Opcode.CONTROL_V1, (1,), 1, b"yo")], 0.3)
    back = parse_control_packet(wire)
    assert (back.session_id, back.remote_session_id, back.acks) == (SRV, CLI, (1,))


def test_server_key_0_core_owes_no_ack_and_continues_at_1() -> None:
    core = after_hard_reset(is_server=True)
    assert core.packets_to_send(0.0) == []
    core.send(Opcode.CONTROL_V1, b"x")
    (pkt,) = core.packets_to_send(0.0)
    assert pkt.message_id == 1 and pkt.acks == ()
    client = after_hard_reset()
    (ack,) = client.packets_to_send(0.0)
    assert ack.acks == (0,)


def _wraps() -> list[tuple[ControlWrap, ControlWrap]]:
    key = StaticKey.from_text(static_key_text())
    return [
        (TLSAuth(key, 1, "SHA256", timestamp=1), TLSAuth(key, 0, "SHA256", timestamp=2)),
        (TLSAuth(key, None, timestamp=1), TLSAuth(key, None, timestamp=2)),
        (TLSCrypt(key, server=False, timestamp=1), TLSCrypt(key, server=True, timestamp=2)),
    ]


@pytest.mark.parametrize("pair", _wraps(), ids=["tls-auth-dir", "tls-auth-nodir", "tls-crypt"])
def test_reset_exchange_under_wraps(pair: tuple[ControlWrap, ControlWrap]) -> None:
    """tls-auth (key-direction 1 / 0, or none) and tls-crypt in the server direction."""
    cwrap, swrap = pair
    cli = PacketMuxer(cwrap, CLI)
    srv = PacketMuxer(swrap, SRV, is_server=True)
    cli.start(0.0)
    srv.start(0.0)
    srv.receive_datagrams(cli.datagrams_to_send(0.0), 0.0)
    assert srv.events() == [ResetComplete(SRV, CLI, b"")]
    cli.receive_datagrams(srv.datagrams_to_send(0.0), 0.0)
    assert cli.events() == [ResetComplete(CLI, SRV, b"")]
    # control both ways, then a dynamic tls-crypt key for key id 1 on both sides
    wire = cli.wrap_control(0, [OutgoingPacket(Opcode.CONTROL_V1, (0,), 1, b"x")], 0.1)
    assert [p.payload for p in srv.receive_datagrams(wire, 0.1)[1]] == [b"x"]
    dyn = bytes(range(256))
    cli.set_dynamic_wrap(dyn, now_unix=5)
    srv.set_dynamic_wrap(dyn, now_unix=6)
    wire = srv.wrap_control(1, [OutgoingPacket(Opcode.CONTROL_SOFT_RESET_V1, (), 0, b"")], 0.2)
    assert [p.key_id for p in cli.receive_datagrams(wire, 0.2)[1]] == [1]
    assert srv.stats.drop_unauthentic == cli.stats.drop_unauthentic == 0


@given(st.lists(st.binary(max_size=120), max_size=30))
def test_hostile_datagrams_never_raise_in_the_server_role(blobs: list[bytes]) -> None:
    m = server()
    m.receive_datagrams([client_reset()], 0.0)
    data, control = m.receive_datagrams(blobs, 1.0)
    for p in control:
        assert p.session_id == CLI
    for d in data:
        assert d[0] >> 3 in (6, 9)
