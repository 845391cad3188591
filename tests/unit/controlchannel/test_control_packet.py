"""Control packet codec: upstream vectors, captured layouts, rejections and misuse."""

from __future__ import annotations

import pytest

from trivpn.controlchannel.packet import (
    CONTROL_SEND_ACK_MAX,
    RELIABLE_ACK_SIZE,
    SESSION_ID_LEN,
    ControlPacket,
    Opcode,
    is_data_byte0,
    parse_control_packet,
    serialize_control_packet,
    split_byte0,
)
from trivpn.errors import LocalProtocolError, RemoteProtocolError

# Vectors from OpenVPN/openvpn tests/unit_tests/openvpn/test_pkt.c.
CLIENT_RESET_V2_NONE = bytes.fromhex("38 6891923fa3103437 00 00000000")
# client_control_with_ack: a P_CONTROL_V1 whose TLS payload upstream truncated to 3 bytes.
CLIENT_CONTROL_WITH_ACK = bytes.fromhex(
    "20 7819bf2ebcd19a45 01 00000000 eafebfa4418ae31b 00000001 160301"
)
CLIENT_ACK_NONE_RANDOM_ID = bytes.fromhex("28 aeb9afe1f01d79c8 01 00000000 dd85db535623b02e")

CLI_SID = bytes.fromhex("0102030405060708")
SRV_SID = bytes.fromhex("a1a2a3a4a5a6a7a8")


def test_client_reset_v2_none_vector() -> None:
    p = parse_control_packet(CLIENT_RESET_V2_NONE)
    assert p == ControlPacket(
        Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, bytes.fromhex("6891923fa3103437"), message_id=0
    )
    assert serialize_control_packet(p) == CLIENT_RESET_V2_NONE


def test_client_control_with_ack_vector() -> None:
    p = parse_control_packet(CLIENT_CONTROL_WITH_ACK)
    assert p.opcode is Opcode.CONTROL_V1
    assert p.key_id == 0
    assert p.session_id == bytes.fromhex("7819bf2ebcd19a45")
    assert p.acks == (0,)
    assert p.remote_session_id == bytes.fromhex("eafebfa4418ae31b")
    assert p.message_id == 1
    assert p.payload == b"\x16\x03\x01"
    assert serialize_control_packet(p) == CLIENT_CONTROL_WITH_ACK


def test_client_ack_none_random_id_vector() -> None:
    p = parse_control_packet(CLIENT_ACK_NONE_RANDOM_ID)
    assert p.opcode is Opcode.ACK_V1
    assert p.acks == (0,)
    assert p.remote_session_id == bytes.fromhex("dd85db535623b02e")
    assert p.message_id is None
    assert p.payload == b""
    assert serialize_control_packet(p) == CLIENT_ACK_NONE_RANDOM_ID


def test_server_reset_layout_matches_capture() -> None:
    # Reference §1.4: 40 | srv_sid | 01 | 00000000 | cli_sid | 00000000, 26 bytes.
    p = ControlPacket(
        Opcode.CONTROL_HARD_RESET_SERVER_V2,
        0,
        SRV_SID,
        acks=(0,),
        remote_session_id=CLI_SID,
        message_id=0,
    )
    wire = serialize_control_packet(p)
    assert wire == b"\x40" + SRV_SID + b"\x01" + bytes(4) + CLI_SID + bytes(4)
    assert len(wire) == 26


def test_dedicated_ack_with_four_ids_is_34_bytes() -> None:
    p = ControlPacket(Opcode.ACK_V1, 0, CLI_SID, acks=(1, 2, 3, 4), remote_session_id=SRV_SID)
    wire = serialize_control_packet(p)
    assert len(wire) == 34
    assert wire[:10] == b"\x28" + CLI_SID + b"\x04"
    assert parse_control_packet(wire) == p


def test_key_id_lives_in_low_bits() -> None:
    p = ControlPacket(Opcode.CONTROL_SOFT_RESET_V1, 3, CLI_SID, message_id=0)
    wire = serialize_control_packet(p)
    assert wire[0] == 0x1B
    assert parse_control_packet(wire).key_id == 3


def test_accepts_bytearray_and_memoryview() -> None:
    expected = parse_control_packet(CLIENT_CONTROL_WITH_ACK)
    assert parse_control_packet(bytearray(CLIENT_CONTROL_WITH_ACK)) == expected
    assert parse_control_packet(memoryview(CLIENT_CONTROL_WITH_ACK)) == expected
    assert isinstance(parse_control_packet(memoryview(CLIENT_CONTROL_WITH_ACK)).payload, bytes)


def test_max_acks_round_trip() -> None:
    p = ControlPacket(
        Opcode.ACK_V1,
        0,
        CLI_SID,
        acks=tuple(range(RELIABLE_ACK_SIZE)),
        remote_session_id=SRV_SID,
    )
    assert parse_control_packet(serialize_control_packet(p)) == p


def test_ack_v1_with_zero_acks_is_accepted() -> None:
    wire = b"\x28" + CLI_SID + b"\x00"
    p = parse_control_packet(wire)
    assert p == ControlPacket(Opcode.ACK_V1, 0, CLI_SID)
    assert serialize_control_packet(p) == wire


def test_split_byte0_and_is_data_byte0() -> None:
    assert split_byte0(0x38) == (7, 0)
    assert split_byte0(0x4F) == (9, 7)
    assert split_byte0(0xFF) == (31, 7)
    assert is_data_byte0(0x30) and is_data_byte0(0x37)
    assert is_data_byte0(0x48) and is_data_byte0(0x4A)
    assert not is_data_byte0(0x38)
    assert not is_data_byte0(0x20)
    assert not any(is_data_byte0(b) for b in range(256) if (b >> 3) not in (6, 9))


@pytest.mark.parametrize("raw_op", [0, 1, 2, 6, 9, *range(12, 32)])
def test_rejects_non_control_opcodes(raw_op: int) -> None:
    wire = bytes((raw_op << 3,)) + CLI_SID + b"\x00" + bytes(4)
    with pytest.raises(RemoteProtocolError):
        parse_control_packet(wire)


@pytest.mark.parametrize(
    "wire",
    [CLIENT_RESET_V2_NONE, CLIENT_CONTROL_WITH_ACK[:-3], CLIENT_ACK_NONE_RANDOM_ID],
)
def test_rejects_every_truncation(wire: bytes) -> None:
    for n in range(len(wire)):
        with pytest.raises(RemoteProtocolError):
            parse_control_packet(wire[:n])


def test_rejects_too_many_acks() -> None:
    count = RELIABLE_ACK_SIZE + 1
    wire = b"\x20" + CLI_SID + bytes((count,)) + bytes(4 * count) + SRV_SID + bytes(4)
    with pytest.raises(RemoteProtocolError, match="too many acks"):
        parse_control_packet(wire)


def test_rejects_missing_message_id() -> None:
    with pytest.raises(RemoteProtocolError, match="message id"):
        parse_control_packet(b"\x20" + CLI_SID + b"\x00" + b"\x00\x00")


def test_rejects_trailing_bytes_after_ack() -> None:
    with pytest.raises(RemoteProtocolError, match="trailing"):
        parse_control_packet(CLIENT_ACK_NONE_RANDOM_ID + b"\x00")


def _base(**kw: object) -> ControlPacket:
    fields: dict[str, object] = {
        "opcode": Opcode.CONTROL_V1,
        "key_id": 0,
        "session_id": CLI_SID,
        "message_id": 1,
    }
    fields.update(kw)
    return ControlPacket(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "packet",
    [
        _base(opcode=Opcode.DATA_V2),
        _base(opcode=Opcode.DATA_V1),
        _base(key_id=8),
        _base(key_id=-1),
        _base(session_id=b"short"),
        _base(acks=(1,)),  # acks without a remote sid
        _base(acks=(1,), remote_session_id=b"\x00" * 7),
        _base(remote_session_id=SRV_SID),  # remote sid without acks
        _base(acks=tuple(range(RELIABLE_ACK_SIZE + 1)), remote_session_id=SRV_SID),
        _base(acks=(2**32,), remote_session_id=SRV_SID),
        _base(message_id=None),
        _base(message_id=2**32),
        _base(opcode=Opcode.ACK_V1),  # ACK_V1 with a message id
        _base(opcode=Opcode.ACK_V1, message_id=None, payload=b"x"),
    ],
)
def test_serialize_refuses_inconsistent_packets(packet: ControlPacket) -> None:
    with pytest.raises(LocalProtocolError):
        serialize_control_packet(packet)


def test_constants() -> None:
    assert (SESSION_ID_LEN, RELIABLE_ACK_SIZE, CONTROL_SEND_ACK_MAX) == (8, 8, 4)
    assert [int(o) for o in Opcode] == [3, 4, 5, 6, 7, 8, 9, 10, 11]
