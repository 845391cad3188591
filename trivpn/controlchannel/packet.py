"""Codec for OpenVPN control-channel packets in their plaintext (unwrapped) form.

Layout (reference §1.4), all integers big-endian::

    op|key_id (1) | own session id (8) | ack_count n (1) | n * acked id (4)
    | peer session id (8, only if n > 0) | message id (4, absent in P_ACK_V1) | payload

tls-auth and tls-crypt (see `wrap.py`) add their bytes around this form; this module never
sees them. Data-channel packets share the first byte but are not parsed here.

Decisions worth knowing:

* A P_ACK_V1 with zero acks is accepted both ways. OpenVPN never sends one, but its own
  parser (`reliable_ack_read` with a count of 0) does not refuse it either, so neither do we;
  the packet is simply useless to the reliable layer.
* A P_ACK_V1 has no payload: trailing bytes after its ack array are refused, which keeps
  parse/serialize an exact round trip.
"""

from __future__ import annotations

import struct

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.wire import (
    CONTROL_OPCODES,
    CONTROL_SEND_ACK_MAX,
    DATA_OPCODES,
    MAX_UINT32,
    MESSAGE_ID_LEN,
    OBSOLETE_OPCODES,
    P_KEY_ID_MASK,
    P_OPCODE_SHIFT,
    RELIABLE_ACK_SIZE,
    SESSION_ID_LEN,
    Opcode,
    byte0,
    is_data_byte0,
    split_byte0,
)

# The wire constants live in trivpn.wire; these names stay importable from here.
__all__ = [
    "CONTROL_OPCODES",
    "CONTROL_SEND_ACK_MAX",
    "MAX_UINT32",
    "MESSAGE_ID_LEN",
    "P_KEY_ID_MASK",
    "P_OPCODE_SHIFT",
    "RELIABLE_ACK_SIZE",
    "SESSION_ID_LEN",
    "ControlPacket",
    "Opcode",
    "is_data_byte0",
    "parse_control_packet",
    "serialize_control_packet",
    "split_byte0",
]

# Lookup by raw int so parsing needs no try/except around the enum constructor.
_CONTROL_BY_VALUE: dict[int, Opcode] = {int(op): op for op in CONTROL_OPCODES}

_U32 = struct.Struct("!I")
# Shortest legal packet: byte0 + own sid + ack_count (a P_ACK_V1 with no acks).
_MIN_LEN = 1 + SESSION_ID_LEN + 1


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """One control packet; `remote_session_id` is set iff `acks` is non-empty."""

    opcode: Opcode
    key_id: int
    session_id: bytes  # the sender's own sid
    acks: tuple[int, ...] = ()
    remote_session_id: bytes | None = None  # the receiver's sid, echoed with acks
    message_id: int | None = None  # None iff opcode is ACK_V1
    payload: bytes = b""


def parse_control_packet(data: bytes | bytearray | memoryview) -> ControlPacket:
    """Decode a plaintext control packet; RemoteProtocolError on anything malformed."""
    buf = bytes(data)
    n = len(buf)
    if n < _MIN_LEN:
        raise RemoteProtocolError(f"control packet too short ({n} bytes)")
    raw_op, key_id = split_byte0(buf[0])
    opcode = _CONTROL_BY_VALUE.get(raw_op)
    if opcode is None:
        if raw_op in OBSOLETE_OPCODES:
            raise RemoteProtocolError("obsolete key-method 1 opcode")
        if raw_op in DATA_OPCODES:
            raise RemoteProtocolError("data opcode on the control channel")
        raise RemoteProtocolError(f"unknown opcode {raw_op}")
    session_id = buf[1 : 1 + SESSION_ID_LEN]
    ack_count = buf[1 + SESSION_ID_LEN]
    if ack_count > RELIABLE_ACK_SIZE:
        raise RemoteProtocolError(f"too many acks ({ack_count} > {RELIABLE_ACK_SIZE})")
    pos = _MIN_LEN
    acks: tuple[int, ...] = ()
    remote_sid: bytes | None = None
    if ack_count:
        end = pos + 4 * ack_count + SESSION_ID_LEN
        if n < end:
            raise RemoteProtocolError("control packet truncated in ack array")
        acks = struct.unpack_from(f"!{ack_count}I", buf, pos)
        pos += 4 * ack_count
        remote_sid = buf[pos:end]
        pos = end
    message_id: int | None = None
    if opcode is Opcode.ACK_V1:
        if pos != n:
            raise RemoteProtocolError("trailing bytes after P_ACK_V1")
        payload = b""
    else:
        if n < pos + MESSAGE_ID_LEN:
            raise RemoteProtocolError("control packet missing message id")
        (message_id,) = _U32.unpack_from(buf, pos)
        payload = buf[pos + MESSAGE_ID_LEN :]
    return ControlPacket(opcode, key_id, session_id, acks, remote_sid, message_id, payload)


def _check(p: ControlPacket) -> None:
    """Refuse packets our own code should never build (LocalProtocolError)."""
    if p.opcode not in CONTROL_OPCODES:
        raise LocalProtocolError(f"{p.opcode!r} is not a control opcode")
    if not 0 <= p.key_id <= P_KEY_ID_MASK:
        raise LocalProtocolError(f"key_id {p.key_id} out of range 0..7")
    if len(p.session_id) != SESSION_ID_LEN:
        raise LocalProtocolError("session_id must be 8 bytes")
    if len(p.acks) > RELIABLE_ACK_SIZE:
        raise LocalProtocolError(f"at most {RELIABLE_ACK_SIZE} acks per packet")
    for ack in p.acks:
        if not 0 <= ack <= MAX_UINT32:
            raise LocalProtocolError(f"ack id {ack} does not fit 32 bits")
    if p.acks:
        if p.remote_session_id is None or len(p.remote_session_id) != SESSION_ID_LEN:
            raise LocalProtocolError("acks need an 8-byte remote_session_id")
    elif p.remote_session_id is not None:
        raise LocalProtocolError("remote_session_id is only sent together with acks")
    if p.opcode == Opcode.ACK_V1:
        if p.message_id is not None:
            raise LocalProtocolError("P_ACK_V1 carries no message id")
        if p.payload:
            raise LocalProtocolError("P_ACK_V1 carries no payload")
    elif p.message_id is None or not 0 <= p.message_id <= MAX_UINT32:
        raise LocalProtocolError("control packet needs a 32-bit message id")


def serialize_control_packet(p: ControlPacket) -> bytes:
    """Encode `p` in the plaintext wire form; LocalProtocolError if it is inconsistent."""
    _check(p)
    parts = [
        bytes((byte0(p.opcode, p.key_id),)),
        bytes(p.session_id),
        bytes((len(p.acks),)),
    ]
    if p.acks:
        parts.append(struct.pack(f"!{len(p.acks)}I", *p.acks))
        assert p.remote_session_id is not None
        parts.append(bytes(p.remote_session_id))
    if p.message_id is not None:
        parts.append(_U32.pack(p.message_id))
        parts.append(bytes(p.payload))
    return b"".join(parts)
