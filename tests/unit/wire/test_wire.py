"""trivpn.wire: the one definition of the shared wire constants, and the layers that use it."""

from __future__ import annotations

import trivpn.controlchannel.packet as packet
import trivpn.controlchannel.wrap as wrap
import trivpn.reliabletransport.core as reliable
from trivpn import wire
from trivpn.wire import (
    CONTROL_OPCODES,
    DATA_OPCODES,
    OBSOLETE_OPCODES,
    P_KEY_ID_MASK,
    Opcode,
    byte0,
    is_data_byte0,
    split_byte0,
)


def test_plain_int_names_match_the_enum() -> None:
    for op in Opcode:
        assert getattr(wire, f"P_{op.name}") == op.value
    assert DATA_OPCODES == {Opcode.DATA_V1, Opcode.DATA_V2}
    assert CONTROL_OPCODES | DATA_OPCODES == set(Opcode)
    assert not CONTROL_OPCODES & DATA_OPCODES
    assert not OBSOLETE_OPCODES & set(Opcode)


def test_first_byte_round_trips_for_every_opcode_and_key_id() -> None:
    for op in Opcode:
        for key_id in range(P_KEY_ID_MASK + 1):
            b = byte0(op, key_id)
            assert 0 <= b <= 0xFF
            assert split_byte0(b) == (op, key_id)
            assert is_data_byte0(b) == (op in DATA_OPCODES)


def test_layers_share_the_same_objects() -> None:
    """The old import paths keep working and cannot drift from trivpn.wire."""
    assert packet.Opcode is Opcode
    assert packet.CONTROL_OPCODES is CONTROL_OPCODES
    assert packet.SESSION_ID_LEN == wire.SESSION_ID_LEN == 8
    assert packet.split_byte0 is split_byte0 and packet.is_data_byte0 is is_data_byte0
    assert reliable.RELIABLE_ACK_SIZE == wire.RELIABLE_ACK_SIZE == 8
    assert reliable.CONTROL_SEND_ACK_MAX == wire.CONTROL_SEND_ACK_MAX == 4
    assert reliable.P_ACK_V1 == Opcode.ACK_V1
    assert wrap.CLEAR_HEADER_LEN == 1 + wire.SESSION_ID_LEN
    assert wrap.TLS_CRYPT_OFF_TAG == wrap.CLEAR_HEADER_LEN + wire.PACKET_ID_LONG_LEN
