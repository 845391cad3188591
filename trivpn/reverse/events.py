"""What a reverse-tunnel session tells its application: typed events, and the one error
its stream API raises. Pure data; every sans-IO piece appends to one shared list that
`Session.events()` hands out."""

from __future__ import annotations

from dataclasses import field

from trivpn.errors import LocalProtocolError
from trivpn.records import dataclass
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
class Binding:
    """One public port a client asks for (protocol 2 may carry several per session)."""

    port: int  # 0 = any
    label: str = ""  # chosen by the client (lowercase letters, digits, '-'), for logs


@dataclass(slots=True, frozen=True)
class BindRequested:
    port: int  # 0 = any; the first binding's
    name: str = ""  # a subdomain to route by name (then no port is bound)
    routes: int = 0  # http.names.ROUTE_HTTP | ROUTE_TLS
    #: protocol 2: every binding in order (protocol 1: empty or the one binding)
    bindings: tuple[Binding, ...] = field(default=(), compare=False)


@dataclass(slots=True, frozen=True)
class Bound:
    port: int  # the first binding's
    lease: int
    host: str = ""  # a named bind: the full public host name, and the relay's ports
    http_port: int = 0
    https_port: int = 0
    ports: tuple[int, ...] = field(default=(), compare=False)  # one per binding, in order


@dataclass(slots=True, frozen=True)
class BindFailed:
    reason: str


@dataclass(slots=True, frozen=True)
class StreamOpened:
    stream_id: int
    peer: str
    binding: int = 0  # index of the binding (public port) the connection came in on


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
