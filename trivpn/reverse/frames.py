"""Frame codec of the reverse-tunnel protocol (pure; no I/O).

Every frame is a 12-byte big-endian header and a payload:

    version u8 | type u8 | flags u16 | stream_id u32 | length u32 | payload[length]

Session frames (handshake, auth, bind, ping, goaway) use stream id 0; stream frames
(open, data, window, rst) use a non-zero id. The decoder is incremental and refuses, with
`RemoteProtocolError` only, anything it cannot vouch for: another version, an unknown type,
flags that type does not carry, a stream id on the wrong kind of frame, a length above the
current limit (which is tiny before authentication, so a stranger cannot make us allocate),
or a fixed-size payload of the wrong size.
"""

from __future__ import annotations

import enum
import struct

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass

VERSION = 1  # of the frame header; never changes within protocol 1 and 2
#: Protocol revisions, negotiated in HELLO / HELLO_ACK (see handshake.py). 1: one binding
#: per session (HELLO 40 bytes, HELLO_ACK 44; BIND 2 bytes or the named form, BIND_OK 6
#: or the named form). 2: several port bindings, each with an optional label
#: (HELLO/HELLO_ACK carry the protocol number as a trailing u16, BIND and BIND_OK carry
#: lists, OPEN's payload starts with the binding index).
PROTOCOL = 2
MAX_BINDINGS = 16
MAX_BINDING_NAME = 63
HEADER = struct.Struct("!BBHII")
HEADER_SIZE = HEADER.size  # 12
#: Frames allowed before authentication are all small; bore uses the same kind of limit.
PRE_AUTH_MAX_FRAME = 256
#: Default and absolute ceilings for a frame's payload after authentication.
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
ABSOLUTE_MAX_FRAME = 64 * 1024 * 1024
MAX_TEXT = 200  # reasons and peer addresses are short, printable, and truncated to this


class FrameType(enum.IntEnum):
    HELLO = 0x01
    HELLO_ACK = 0x02
    AUTH = 0x03
    AUTH_OK = 0x04
    AUTH_ERR = 0x05
    BIND = 0x06
    BIND_OK = 0x07
    PING = 0x08
    GOAWAY = 0x09
    BIND_ERR = 0x0A
    OPEN = 0x10
    DATA = 0x11
    WINDOW = 0x12
    RST = 0x13


class Flag(enum.IntFlag):
    NONE = 0
    ACK = 0x1  # PING: this is the pong; OPEN: the client accepted the stream
    FIN = 0x4  # DATA: the sender will write no more on this stream (half-close)


#: Stream ids are non-zero exactly for these types.
STREAM_TYPES = frozenset({FrameType.OPEN, FrameType.DATA, FrameType.WINDOW, FrameType.RST})
_ALLOWED_FLAGS: dict[int, int] = {t: 0 for t in FrameType}
_ALLOWED_FLAGS[FrameType.PING] = Flag.ACK
_ALLOWED_FLAGS[FrameType.OPEN] = Flag.ACK
_ALLOWED_FLAGS[FrameType.DATA] = Flag.FIN
#: An older trivpn's AUTH (the MAC alone, no takeover proof): still accepted, and such a
#: client may take over only a session that did not prove anything either (see relay.py).
LEGACY_SIZE: dict[int, int] = {FrameType.AUTH: 32}
#: Exact payload sizes; types absent here carry a variable payload (checked by the session).
FIXED_SIZE: dict[int, int] = {
    FrameType.HELLO: 40,  # client nonce 16 | client id 16 | window u32 | max frame u32
    FrameType.HELLO_ACK: 44,  # challenge 32 | window u32 | max frame u32 | heartbeat ms u32
    FrameType.AUTH: 96,  # HMAC-SHA256 | takeover key revealed 32 | next key's SHA-256 32
    FrameType.AUTH_OK: 32,  # the relay's proof that it knows the token too
    FrameType.PING: 8,  # opaque, echoed in the pong
    FrameType.WINDOW: 4,  # credit increment
    FrameType.RST: 4,  # error code
}
#: The protocol >= 2 form of HELLO / HELLO_ACK: the same fields and the protocol u16.
EXTENDED_SIZE: dict[int, int] = {FrameType.HELLO: 42, FrameType.HELLO_ACK: 46}
MAX_VARIABLE: dict[int, int] = {
    FrameType.AUTH_ERR: MAX_TEXT,
    FrameType.BIND_ERR: MAX_TEXT,
    FrameType.GOAWAY: 4 + MAX_TEXT,
    # exact sizes are checked by the handshake, per protocol. Protocol 1: port u16
    # [| routes u8 | length u8 | subdomain]; protocol 2: count u8 | count x (port u16 |
    # label length u8 | label)
    FrameType.BIND: max(4 + 63, 1 + MAX_BINDINGS * (3 + MAX_BINDING_NAME)),
    # protocol 1: port u16 | lease u32 [| http port u16 | https port u16 | length u8 | host
    # name]; protocol 2: lease u32 | count u8 | count x port u16
    FrameType.BIND_OK: max(11 + 253, 5 + 2 * MAX_BINDINGS),
}


class ErrorCode(enum.IntEnum):
    """GOAWAY and RST codes (one space; the name is what gets logged)."""

    NORMAL = 0
    PROTOCOL = 1
    INTERNAL = 2
    FLOW_CONTROL = 3
    REFUSED = 4  # RST: the local service could not be reached / too many streams
    CANCEL = 5  # RST: one end aborted the connection
    TIMEOUT = 6  # GOAWAY: heartbeats missed; RST: stream lingered half-closed too long
    REPLACED = 7  # GOAWAY: the same client connected again and took over
    BUSY = 8  # RST: the receiver's buffer limit (session or relay) is reached


@dataclass(slots=True, frozen=True)
class Frame:
    type: FrameType
    flags: int
    stream_id: int
    payload: bytes


def encode(ftype: FrameType, flags: int = 0, stream_id: int = 0, payload: bytes = b"") -> bytes:
    """One frame as bytes; misuse (an id on a session frame, bad flags) is our bug."""
    if (ftype in STREAM_TYPES) != (stream_id != 0):
        raise LocalProtocolError(f"{ftype.name} with stream id {stream_id}")
    if flags & ~_ALLOWED_FLAGS[ftype]:
        raise LocalProtocolError(f"{ftype.name} cannot carry flags {flags:#x}")
    return HEADER.pack(VERSION, ftype, flags, stream_id, len(payload)) + payload


def header(ftype: FrameType, flags: int, stream_id: int, length: int) -> bytes:
    """Just the header, for callers that write the payload separately (no copy of bulk data)."""
    return HEADER.pack(VERSION, ftype, flags, stream_id, length)


def text(payload: bytes) -> str:
    """A peer-supplied reason, made printable for one log line."""
    s = payload[:MAX_TEXT].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in s)


def looks_like_tls(head: bytes) -> bool:
    """Bytes that start a TLS record (an alert 0x15 or a handshake 0x16, then major
    version 3), never a frame (whose first byte is VERSION): a TLS peer answered."""
    return len(head) >= 2 and head[0] in (0x15, 0x16) and head[1] == 0x03


class FrameDecoder:
    """Incremental decoder: `feed(bytes)` returns the complete frames so far."""

    __slots__ = ("_buf", "_pos", "max_frame")

    def __init__(self, max_frame: int = PRE_AUTH_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def head(self, n: int) -> bytes:
        """The first `n` bytes not yet taken as a frame (fewer if fewer arrived)."""
        return bytes(self._buf[self._pos : self._pos + n])

    def feed(self, data: bytes) -> list[Frame]:
        """All complete frames so far, judged by the current `max_frame`."""
        self.push(data)
        frames: list[Frame] = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def push(self, data: bytes) -> None:
        """Buffer bytes; take frames out one at a time with `next_frame()`.

        One frame at a time lets the caller change `max_frame` between frames: bytes
        coalesced with the frame that ends the handshake are judged by the new limit.
        """
        buf = self._buf
        if self._pos and self._pos == len(buf):
            buf.clear()
            self._pos = 0
        buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < HEADER_SIZE:
            return None
        version, ftype, flags, sid, length = HEADER.unpack_from(buf, pos)
        if version != VERSION:
            raise RemoteProtocolError(f"unsupported frame version {version}")
        try:
            kind = FrameType(ftype)
        except ValueError:
            raise RemoteProtocolError(f"unknown frame type {ftype:#04x}") from None
        if flags & ~_ALLOWED_FLAGS[kind]:
            raise RemoteProtocolError(f"{kind.name} frame with flags {flags:#x}")
        if (kind in STREAM_TYPES) != (sid != 0):
            raise RemoteProtocolError(f"{kind.name} frame with stream id {sid}")
        if length > self.max_frame:
            raise RemoteProtocolError(
                f"{kind.name} frame of {length} bytes exceeds the limit of {self.max_frame}"
            )
        fixed = FIXED_SIZE.get(kind)
        if fixed is not None and length not in (
            fixed,
            EXTENDED_SIZE.get(kind),
            LEGACY_SIZE.get(kind),
        ):
            raise RemoteProtocolError(f"{kind.name} frame of {length} bytes, expected {fixed}")
        limit = MAX_VARIABLE.get(kind)
        if limit is not None and length > limit:
            raise RemoteProtocolError(f"{kind.name} frame of {length} bytes is too long")
        start = pos + HEADER_SIZE
        if len(buf) - start < length:
            return None
        frame = Frame(kind, flags, sid, bytes(buf[start : start + length]))
        pos = start + length
        # compact once the consumed prefix is large, so a long stream of frames stays O(n)
        if pos > 65536 and pos * 2 > len(buf):
            del buf[:pos]
            pos = 0
        self._pos = pos
        return frame
