"""What a reverse-tunnel session tells its application: typed events, and the one error
its stream API raises. Pure data; every sans-IO piece appends to one shared list that
`Session.events()` hands out."""

from __future__ import annotations

from dataclasses import dataclass, field

from trivpn.errors import LocalProtocolError
from trivpn.reverse.frames import ErrorCode


class StreamClosedError(LocalProtocolError):
    """A write on a stream (or session) that is already closed: ours to handle, not a crash."""


@dataclass(slots=True, frozen=True)
class Authenticated:
    name: str  # relay: which token matched; client: ""
    client_id: bytes
    #: relay: the client's takeover key for its previous session (check it against the
    #: commitment that session left with `handshake.takeover_proven`), and the commitment
    #: (SHA-256) to the key that will prove its next one; client: both b"". Kept out of
    #: repr (a spent key is no secret, but logs need neither) and of equality.
    reveal: bytes = field(default=b"", repr=False, compare=False)
    commit: bytes = field(default=b"", repr=False, compare=False)


@dataclass(slots=True, frozen=True)
class AuthFailed:
    reason: str


@dataclass(slots=True, frozen=True)
class BindRequested:
    port: int  # 0 = any


@dataclass(slots=True, frozen=True)
class Bound:
    port: int
    lease: int


@dataclass(slots=True, frozen=True)
class BindFailed:
    reason: str


@dataclass(slots=True, frozen=True)
class StreamOpened:
    stream_id: int
    peer: str


@dataclass(slots=True, frozen=True)
class StreamAccepted:
    stream_id: int


@dataclass(slots=True, frozen=True)
class StreamData:
    stream_id: int
    data: bytes


@dataclass(slots=True, frozen=True)
class StreamEnded:
    """The peer half-closed: no more data will come on this stream."""

    stream_id: int


@dataclass(slots=True, frozen=True)
class StreamReset:
    stream_id: int
    code: ErrorCode
    by_peer: bool


@dataclass(slots=True, frozen=True)
class StreamClosed:
    """Both directions finished cleanly; the stream is forgotten."""

    stream_id: int


@dataclass(slots=True, frozen=True)
class StreamWritable:
    stream_id: int


@dataclass(slots=True, frozen=True)
class Pong:
    rtt: float


@dataclass(slots=True, frozen=True)
class Ignored:
    reason: str


@dataclass(slots=True, frozen=True)
class SessionClosed:
    reason: str
    code: ErrorCode
    by_peer: bool


Event = (
    Authenticated
    | AuthFailed
    | BindRequested
    | Bound
    | BindFailed
    | StreamOpened
    | StreamAccepted
    | StreamData
    | StreamEnded
    | StreamReset
    | StreamClosed
    | StreamWritable
    | Pong
    | Ignored
    | SessionClosed
)
