"""Sans-IO core of the manager ⇄ tunnel wire: the text header, version lists, frames.

Theory of operation
-------------------
A stream opens with one header line from each side, ``trivpn <role> <versions>\\n``, where
``<versions>`` is a comma-separated list of ``major.minor`` with exactly one entry per major
(the highest minor that side speaks; every lower minor of that major is implied), majors
strictly ascending, major 0 forbidden. Both sides write their header and read the peer's at
the same time (so an unbuffered pipe cannot deadlock). :class:`HeaderReader` takes the
peer's bytes *one at a time* from the service, so nothing that follows the line (the first
frame) is consumed; more than :data:`MAX_HEADER` bytes without a newline is an error.
:func:`negotiate` picks the highest common major and, for it, the lower of the two minors.

After the header, each message is a frame: a 4-byte big-endian length, then that many bytes
of protobuf. :class:`FrameDecoder` buffers arbitrary chunks and returns whole payloads. A
length of zero or above :data:`MAX_MESSAGE` breaks the decoder for good (`error` says why;
the frames before it are still returned, so nothing good is lost): a stream with a corrupt
frame cannot be resynchronised, so the service hangs up.
"""

from __future__ import annotations

import re
import struct

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass

__all__ = [
    "MAX_HEADER",
    "MAX_MESSAGE",
    "PREAMBLE",
    "ROLES",
    "FrameDecoder",
    "Header",
    "HeaderReader",
    "Version",
    "encode_frame",
    "format_header",
    "format_versions",
    "negotiate",
    "parse_header",
    "parse_versions",
]

PREAMBLE = "trivpn"
ROLES = ("manager", "tunnel")
#: Longest header line without its newline (a 256-byte read buffer, as in the reference).
MAX_HEADER = 255
#: Largest message body: a misbehaving peer must not make us allocate more.
MAX_MESSAGE = 0x1000000
_LEN = struct.Struct(">I")
_NUMBER = re.compile(r"(0|[1-9][0-9]{0,8})\Z")


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """One ``major.minor`` protocol version."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def _parse_version(text: str) -> Version:
    parts = text.split(".")
    if len(parts) != 2 or not all(_NUMBER.match(p) for p in parts):
        raise RemoteProtocolError(f"bad version {text[:20]!r}: need major.minor")
    major, minor = int(parts[0]), int(parts[1])
    if major == 0:
        raise RemoteProtocolError(f"bad version {text[:20]!r}: major version 0")
    return Version(major, minor)


def _check_list(versions: tuple[Version, ...]) -> None:
    if not versions:
        raise RemoteProtocolError("empty version list")
    for a, b in zip(versions, versions[1:], strict=False):
        if a.major == b.major:
            raise RemoteProtocolError(f"duplicate major version {a.major}")
        if a.major > b.major:
            raise RemoteProtocolError("versions are not sorted")
    if versions[0].major == 0:
        raise RemoteProtocolError("major version 0")


def parse_versions(text: str) -> tuple[Version, ...]:
    """Parse and validate a version list such as ``"1.2,3.0"``."""
    versions = tuple(_parse_version(item) for item in text.split(","))
    _check_list(versions)
    return versions


def format_versions(versions: tuple[Version, ...]) -> str:
    return ",".join(str(v) for v in versions)


def negotiate(ours: tuple[Version, ...], theirs: tuple[Version, ...]) -> Version:
    """Highest common major; the lower of the two minors for it."""
    best: Version | None = None
    for a in ours:
        for b in theirs:
            if a.major == b.major and (best is None or a.major > best.major):
                best = Version(a.major, min(a.minor, b.minor))
    if best is None:
        raise RemoteProtocolError(
            f"our versions {format_versions(ours)} are not compatible with the peer's "
            f"{format_versions(theirs)}"
        )
    return best


@dataclass(frozen=True, slots=True)
class Header:
    role: str
    versions: tuple[Version, ...]


def format_header(role: str, versions: tuple[Version, ...]) -> bytes:
    """Our header line; refuses (LocalProtocolError) what the peer would have to reject."""
    if role not in ROLES:
        raise LocalProtocolError(f"unknown role {role!r}")
    try:
        _check_list(versions)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"our version list: {exc}") from None
    line = f"{PREAMBLE} {role} {format_versions(versions)}"
    if len(line) > MAX_HEADER:
        raise LocalProtocolError("header longer than 255 bytes")
    return (line + "\n").encode("ascii")


def parse_header(line: bytes, expected_role: str) -> Header:
    """Validate the peer's header line (without its newline) in the reference's order."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise RemoteProtocolError("header is not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 3:
        raise RemoteProtocolError(f"malformed header {text[:60]!r}: need 3 space-separated parts")
    if parts[0] != PREAMBLE:
        raise RemoteProtocolError(f"wrong preamble {parts[0][:20]!r} (want {PREAMBLE!r})")
    if parts[1] != expected_role:
        raise RemoteProtocolError(f"wrong role {parts[1][:20]!r} (want {expected_role!r})")
    return Header(parts[1], parse_versions(parts[2]))


class HeaderReader:
    """Collects the peer's header one byte at a time; `done` once the newline arrived."""

    __slots__ = ("_buf", "line")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.line: bytes | None = None

    def feed_byte(self, byte: int) -> bool:
        """Take one byte; True once the header line is complete (then feed nothing more)."""
        if self.line is not None:
            raise LocalProtocolError("header already complete")
        if byte == 0x0A:
            self.line = bytes(self._buf)
            return True
        if len(self._buf) >= MAX_HEADER:
            raise RemoteProtocolError("header malformed or too large (no newline in 256 bytes)")
        self._buf.append(byte)
        return False


def encode_frame(payload: bytes) -> bytes:
    """Length-prefix one serialized message (which must be non-empty and within limits)."""
    if not payload:
        raise LocalProtocolError("refusing to send an empty message")
    if len(payload) > MAX_MESSAGE:
        raise LocalProtocolError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE}")
    return _LEN.pack(len(payload)) + payload


class FrameDecoder:
    """Turns stream chunks into message payloads; broken for good after the first error."""

    __slots__ = ("_buf", "_broken", "_need")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._broken: str | None = None
        self._need: int | None = None  # body length of the frame being collected

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned (a partial frame at end of stream is an error)."""
        return len(self._buf)

    @property
    def error(self) -> str | None:
        """Why the stream is broken (set by `feed`); the caller must then hang up."""
        return self._broken

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Every payload completed by `data`, in order.

        A bad length does not raise here, so the good frames before it in the same chunk are
        still returned: check `error` afterwards. Feeding a broken decoder raises
        RemoteProtocolError.
        """
        if self._broken is not None:
            raise RemoteProtocolError(self._broken)
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = 0
        while True:
            if self._need is None:
                if len(buf) - pos < 4:
                    break
                (length,) = _LEN.unpack_from(buf, pos)
                if length == 0 or length > MAX_MESSAGE:
                    self._broken = (
                        "zero-length message" if length == 0
                        else f"message length {length} exceeds {MAX_MESSAGE}"
                    )
                    del buf[:]
                    return out
                pos += 4
                self._need = length
            if len(buf) - pos < self._need:
                break
            out.append(bytes(buf[pos : pos + self._need]))
            pos += self._need
            self._need = None
        del buf[:pos]
        return out
