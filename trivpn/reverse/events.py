"""What a reverse-tunnel session tells its application: typed events, and the one error
its stream API raises. Pure data; every sans-IO piece appends to one shared list that
`Session.events()` hands out."""

from __future__ import annotations

from dataclasses import dataclass

from trivpn.errors import LocalProtocolError
from trivpn.reverse.frames import ErrorCode


class StreamClosedError(LocalProtocolError):
    """A write on a stream (or session) that is already closed: ours to handle, not a crash."""


@dataclass(slots=True, frozen=True)
class Authenticated:
    name: str  # relay: which token matched; client: ""
    client_id: bytes


@dataclass(slots=True, frozen=True)
class AuthFailed:
    reason: str


@dataclass(slots=True, frozen=True)
class BindRequested:
    port: int  # 0 = any
    name: str = ""  # a subdomain to route by name (then no port is bound)
    routes: int = 0  # http.names.ROUTE_HTTP | ROUTE_TLS


@dataclass(slots=True, frozen=True)
class Bound:
    port: int
    lease: int
    host: str = ""  # a named bind: the full public host name, and the relay's ports
    http_port: int = 0
    https_port: int = 0


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
