"""Compression framing and the magic payloads of the data channel (reference §6.4).

No compression algorithm is ever applied: the framing only tells a peer that the payload is
uncompressed, in whichever of the four spellings the session agreed on. Every outgoing
payload is framed (pings and OCC messages included); incoming payloads are un-framed before
the ping / OCC prefixes are recognised. Pure functions, no state.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

#: Keepalive payload (`ping_string`, ping.c).
PING_MAGIC = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")
#: Prefix of every OCC message (`occ_magic`, occ.c); one opcode byte follows.
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")
#: OCC opcode meaning "the peer is exiting" (explicit-exit-notify without cc-exit).
OCC_EXIT = 6
#: Framing bytes (comp.h): "comp-lzo no" prefix, "compress stub" swap marker, v2 escape.
NO_COMPRESS_BYTE = 0xFA
NO_COMPRESS_BYTE_SWAP = 0xFB
COMP_ALGV2_INDICATOR_BYTE = 0x50
#: Second byte of the stub-v2 escape we send; upstream's encoder writes 0x0A, decoders want 0.
COMP_ALGV2_UNCOMPRESSED_SENT = 0x00
COMP_ALGV2_UNCOMPRESSED_LENIENT = 0x0A


class Compression(Enum):
    """Compression framing agreed with the peer; no algorithm is ever applied."""

    NONE = "none"  # 2.6 default: no framing byte at all
    LZO_NO = "lzo-no"  # "comp-lzo no": 0xFA prefix
    STUB = "stub"  # "compress" / "compress stub": first byte swapped to the end, 0xFB
    STUB_V2 = "stub-v2"  # "compress stub-v2": 0x50 0x00 escape only when byte0 is 0x50


def _frame_lzo_no(p: bytes) -> bytes:
    return b"\xfa" + p


def _frame_stub(p: bytes) -> bytes:
    return b"\xfb" + p[1:] + p[:1]


def _frame_stub_v2(p: bytes) -> bytes:
    return b"\x50\x00" + p if p[0] == COMP_ALGV2_INDICATOR_BYTE else p


def _unframe_lzo_no(p: bytes) -> bytes | None:
    if not p:
        return p
    return p[1:] if p[0] == NO_COMPRESS_BYTE else None


def _unframe_stub(p: bytes) -> bytes | None:
    if not p:
        return p
    if p[0] != NO_COMPRESS_BYTE_SWAP:
        return None
    return p[-1:] + p[1:-1] if len(p) > 1 else b""


def _unframe_stub_v2(p: bytes) -> bytes | None:
    if not p or p[0] != COMP_ALGV2_INDICATOR_BYTE:
        return p
    if len(p) >= 2 and p[1] in (COMP_ALGV2_UNCOMPRESSED_SENT, COMP_ALGV2_UNCOMPRESSED_LENIENT):
        return p[2:]
    return None  # 0x50 0x01 (lz4-v2) or garbage: we cannot decompress


#: Adds the framing to one non-empty payload.
Framer = Callable[[bytes], bytes]
#: Removes it; None when the payload is not framed as agreed (or is really compressed).
Unframer = Callable[[bytes], bytes | None]

FRAMING: dict[Compression, tuple[Framer | None, Unframer | None]] = {
    Compression.NONE: (None, None),
    Compression.LZO_NO: (_frame_lzo_no, _unframe_lzo_no),
    Compression.STUB: (_frame_stub, _unframe_stub),
    Compression.STUB_V2: (_frame_stub_v2, _unframe_stub_v2),
}


def framed(compression: Compression, payload: bytes) -> bytes:
    """`payload` as it is sealed under `compression` (for the fixed ping / OCC payloads)."""
    frame = FRAMING[compression][0]
    return payload if frame is None else frame(payload)


__all__ = [
    "FRAMING",
    "OCC_EXIT",
    "OCC_MAGIC",
    "PING_MAGIC",
    "Compression",
    "Framer",
    "Unframer",
    "framed",
]
