"""OpenVPN wire constants used by more than one layer, defined once.

The first byte of every packet is ``opcode << P_OPCODE_SHIFT | key_id``; the muxer splits
on it, the control codec and the data channel build it, the reliable layer names its ACK
opcode, and sizes of session ids, ACK arrays and packet ids fix the control MTU arithmetic.
Each value is a protocol fact (`ssl_pkt.h`, `reliable.h`, `packet_id.h`, reference §1.4);
keeping them here means a layer can never disagree with another about them.

Constants that only one layer uses (tls-crypt offsets, AEAD tag sizes, OCC magic, ...)
stay with that layer.
"""

from __future__ import annotations

from enum import IntEnum


class Opcode(IntEnum):
    """Wire opcodes (`ssl_pkt.h P_*`); 1 and 2 (key-method 1) are obsolete and not listed."""

    CONTROL_SOFT_RESET_V1 = 3
    CONTROL_V1 = 4
    ACK_V1 = 5
    DATA_V1 = 6
    CONTROL_HARD_RESET_CLIENT_V2 = 7
    CONTROL_HARD_RESET_SERVER_V2 = 8
    DATA_V2 = 9
    CONTROL_HARD_RESET_CLIENT_V3 = 10
    CONTROL_WKC_V1 = 11


# Plain-int names for the hot paths (an IntEnum member costs an attribute lookup per use).
P_CONTROL_SOFT_RESET_V1 = 3
P_CONTROL_V1 = 4
P_ACK_V1 = 5
P_DATA_V1 = 6
P_CONTROL_HARD_RESET_CLIENT_V2 = 7
P_CONTROL_HARD_RESET_SERVER_V2 = 8
P_DATA_V2 = 9
P_CONTROL_HARD_RESET_CLIENT_V3 = 10
P_CONTROL_WKC_V1 = 11
#: The obsolete key-method 1 opcodes (P_CONTROL_HARD_RESET_CLIENT_V1 / _SERVER_V1).
OBSOLETE_OPCODES = frozenset({1, 2})

#: Opcodes of control packets (the control codec's domain).
CONTROL_OPCODES = frozenset(
    {
        Opcode.CONTROL_SOFT_RESET_V1,
        Opcode.CONTROL_V1,
        Opcode.ACK_V1,
        Opcode.CONTROL_HARD_RESET_CLIENT_V2,
        Opcode.CONTROL_HARD_RESET_SERVER_V2,
        Opcode.CONTROL_HARD_RESET_CLIENT_V3,
        Opcode.CONTROL_WKC_V1,
    }
)
#: P_DATA_V1 and P_DATA_V2, as plain ints: the only opcodes the data channel keeps.
DATA_OPCODES = frozenset({P_DATA_V1, P_DATA_V2})

#: `P_OPCODE_SHIFT` and `P_KEY_ID_MASK`: byte0 = (opcode << 3) | key_id.
P_OPCODE_SHIFT = 3
P_KEY_ID_MASK = 0x07
#: Number of key ids (0..7); a key id wraps from 7 to 1, 0 is used only once per session.
KEY_ID_COUNT = P_KEY_ID_MASK + 1

#: Length of a session id (`SID_SIZE`).
SESSION_ID_LEN = 8
#: Most ack ids one packet may carry; a receiver drops packets with more (`RELIABLE_ACK_SIZE`).
RELIABLE_ACK_SIZE = 8
#: Most acks OpenVPN piggy-backs on a P_CONTROL_V1 / SOFT_RESET (`CONTROL_SEND_ACK_MAX`).
CONTROL_SEND_ACK_MAX = 4
#: Length of a control message id (`packet_id_type`).
MESSAGE_ID_LEN = 4
#: Largest value of any 32-bit id on the wire (message ids, acks, packet ids).
MAX_UINT32 = 0xFFFFFFFF

#: Short-form packet id of data packets (`packet_id_type`).
PACKET_ID_LEN = 4
#: Long-form packet id of tls-auth / tls-crypt: 32-bit id + 32-bit time (`packet_id_size(true)`).
PACKET_ID_LONG_LEN = 8
#: Highest packet id; once it has been used the key can send no more (`PACKET_ID_MAX`).
PACKET_ID_MAX = MAX_UINT32
#: Largest 24-bit peer id of P_DATA_V2; 0xFFFFFF itself means "no peer id" (`MAX_PEER_ID`).
MAX_PEER_ID = 0xFFFFFF

#: OpenVPN's default `tls-mtu` (TLS_MTU_DEFAULT): the whole control packet incl. IP/UDP.
TLS_MTU_DEFAULT = 1250


def byte0(opcode: int, key_id: int) -> int:
    """The first byte of a packet (no range checks: callers validate `key_id`)."""
    return opcode << P_OPCODE_SHIFT | key_id


def split_byte0(b: int) -> tuple[int, int]:
    """Split a first byte into (opcode, key_id) without judging either."""
    return b >> P_OPCODE_SHIFT, b & P_KEY_ID_MASK


def is_data_byte0(b: int) -> bool:
    """True if the first byte announces P_DATA_V1 or P_DATA_V2 (cheap demux test)."""
    return (b >> P_OPCODE_SHIFT) in DATA_OPCODES
