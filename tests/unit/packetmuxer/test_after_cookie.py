"""`PacketMuxer.server_after_cookie`: a server-role muxer whose reset was answered statelessly."""

from __future__ import annotations

import pytest

from trivpn.controlchannel.packet import (
    ControlPacket,
    Opcode,
    parse_control_packet,
    serialize_control_packet,
)
from trivpn.controlchannel.wrap import NoWrap
from trivpn.errors import LocalProtocolError
from trivpn.messages import ResetComplete
from trivpn.packetmuxer.core import PacketMuxer
from trivpn.reliabletransport.core import OutgoingPacket

CLI = bytes.fromhex("1111111111111111")
COOKIE = bytes.fromhex("c860c860c860c860")


def test_starts_complete_and_owes_nothing() -> None:
    m = PacketMuxer.server_after_cookie(NoWrap(), COOKIE, CLI)
    m.start(0.0)
    assert m.is_server and m.reset_complete and not m.answer_owed
    assert m.get_timer() is None and m.datagrams_to_send(0.0) == []
    assert (m.local_session_id, m.remote_session_id) == (COOKIE, CLI)


def test_the_first_packet_yields_reset_complete_then_its_control() -> None:
    m = PacketMuxer.server_after_cookie(NoWrap(), COOKIE, CLI)
    first = serialize_control_packet(ControlPacket(Opcode.CONTROL_V1, 0, CLI, (0,), COOKIE, 1, b"hi"))
    _, control = m.receive_datagrams([first], 0.0)
    assert m.events() == [ResetComplete(COOKIE, CLI, b"")]
    assert [p.payload for p in control] == [b"hi"]
    assert m.events() == []  # exactly once
    (wire,) = m.wrap_control(0, [OutgoingPacket(Opcode.CONTROL_V1, (1,), 1, b"yo")], 0.1)
    back = parse_control_packet(wire)
    assert (back.session_id, back.remote_session_id, back.message_id) == (COOKIE, CLI, 1)


def test_a_late_duplicate_client_reset_is_answered_like_in_the_stateful_path() -> None:
    m = PacketMuxer.server_after_cookie(NoWrap(), COOKIE, CLI)
    m.events()
    dup = serialize_control_packet(ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, CLI, (), None, 0))
    m.receive_datagrams([dup], 0.0)
    assert m.events() == [] and m.answer_owed
    (wire,) = m.datagrams_to_send(0.0)
    assert parse_control_packet(wire).opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2


@pytest.mark.parametrize("bad", [b"\x00" * 8, b"\x01" * 7])
def test_bad_client_session_id_is_refused(bad: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        PacketMuxer.server_after_cookie(NoWrap(), COOKIE, bad)
