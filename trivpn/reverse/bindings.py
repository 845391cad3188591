"""Protocol-2 BIND / BIND_OK payloads: several port bindings on one session (pure codec).

BIND:    count u8 (1..MAX_BINDINGS) | count x (port u16 | label length u8 | label)
BIND_OK: lease u32 | count u8 | count x port u16   (the ports in the order asked)

A label is optional and at most 63 of `a-z 0-9 -` (not at either end): the client's name
for the tunnel, used in the relay's log and in a refusal ("tunnel web: ..."). Decoding
accepts exactly one well-formed payload and raises RemoteProtocolError for anything else.
"""

from __future__ import annotations

import struct

from trivpn.errors import RemoteProtocolError
from trivpn.reverse.events import Binding
from trivpn.reverse.frames import MAX_BINDING_NAME, MAX_BINDINGS, text

_U16 = struct.Struct("!H")
_BIND_OK2 = struct.Struct("!IB")  # lease | count, then count x port u16
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def check_label(label: str) -> str | None:
    """Why `label` cannot name a binding, or None."""
    if len(label) > MAX_BINDING_NAME:
        return f"is longer than {MAX_BINDING_NAME} characters"
    if not set(label) <= _LABEL_CHARS or label.startswith("-") or label.endswith("-"):
        return "may hold only lowercase letters, digits and inner '-'"
    return None


def encode_bindings(bindings: tuple[Binding, ...]) -> bytes:
    out = bytearray([len(bindings)])
    for b in bindings:
        label = b.label.encode()
        out += _U16.pack(b.port) + bytes([len(label)]) + label
    return bytes(out)


def decode_bindings(payload: bytes) -> tuple[Binding, ...]:
    if not payload or not 1 <= payload[0] <= MAX_BINDINGS:
        raise RemoteProtocolError(f"BIND must carry 1 to {MAX_BINDINGS} bindings")
    out: list[Binding] = []
    pos = 1
    for _ in range(payload[0]):
        if len(payload) < pos + 3:
            raise RemoteProtocolError("BIND payload cut short")
        port = _U16.unpack_from(payload, pos)[0]
        size = payload[pos + 2]
        raw = payload[pos + 3 : pos + 3 + size]
        if len(raw) != size:
            raise RemoteProtocolError("BIND payload cut short")
        label = raw.decode("ascii", "replace")
        why = check_label(label)
        if why is not None:
            raise RemoteProtocolError(f"binding label {text(raw)!r} {why}")
        out.append(Binding(port, label))
        pos += 3 + size
    if pos != len(payload):
        raise RemoteProtocolError("BIND payload has trailing bytes")
    return tuple(out)


def encode_bind_ok(ports: tuple[int, ...], lease: int) -> bytes:
    return _BIND_OK2.pack(lease, len(ports)) + b"".join(_U16.pack(p) for p in ports)


def decode_bind_ok(payload: bytes, count: int) -> tuple[tuple[int, ...], int]:
    """(ports, lease) for `count` bindings asked."""
    if len(payload) != _BIND_OK2.size + 2 * count or payload[4] != count:
        raise RemoteProtocolError(f"BIND_OK does not carry {count} ports")
    lease = _BIND_OK2.unpack_from(payload)[0]
    ports = tuple(_U16.unpack_from(payload, _BIND_OK2.size + 2 * i)[0] for i in range(count))
    if 0 in ports:
        raise RemoteProtocolError("the relay bound port 0")
    return ports, lease
