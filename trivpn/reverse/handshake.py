"""Handshake, authentication and bind of a reverse-tunnel session (pure, either role).

Theory of operation
-------------------
States, enforced on both sides (a frame not legal in the current state is a
RemoteProtocolError; the session then closes with GOAWAY(PROTOCOL)):

    client: INIT --HELLO--> (HELLO_ACK) HANDSHAKEN --AUTH--> (AUTH_OK) AUTHENTICATED
            --BIND--> (BIND_OK) BOUND
    relay:  INIT (HELLO) --HELLO_ACK--> HANDSHAKEN (AUTH) --AUTH_OK--> AUTHENTICATED
            (BIND) --BIND_OK--> BOUND

HELLO / HELLO_ACK carry each side's per-stream window and largest frame, and the relay's
heartbeat interval, which the client adopts. Authentication is challenge-response: the
relay sends a random challenge, the client answers HMAC-SHA256(token, label | challenge |
client nonce | client id), the relay compares against every configured token with
`hmac.compare_digest` (all of them, so the time taken does not say which token was
close), and proves in AUTH_OK that it knows the token too. The token never crosses the
wire. The relay answers BIND only when its application chose its ports (`accept_bind` /
`accept_binds` or `reject_bind`); the client binds right after AUTH_OK.

Protocol revision (frames.PROTOCOL): a client that asks for one unnamed binding sends the
protocol-1 HELLO (40 bytes) and speaks protocol 1, so it works with any relay. A client
with several bindings, or a named one, appends the highest protocol it speaks (u16) to
HELLO; the relay answers with the extended HELLO_ACK carrying min(its own, the client's),
and both use that. An extended HELLO_ACK answers only an extended HELLO, and a protocol
below 2 in either is a protocol error. A relay of protocol 1 refuses the 42-byte HELLO
(a clear GOAWAY), never misreads it. Protocol 2 changes only BIND / BIND_OK (lists, see
frames.py) and OPEN (the binding index first); all-or-nothing: one refused binding
refuses the bind.

This piece knows nothing of streams, time or framing limits: the `Session` enforces the
256-byte pre-auth frame limit and the handshake deadline, and takes over at BOUND. A
refused token or bind is not an exception but a `HandshakeFailed` the session turns into
its end.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.reverse.config import MAX_WINDOW, SessionConfig
from trivpn.reverse.events import (
    Authenticated,
    AuthFailed,
    BindFailed,
    Binding,
    BindRequested,
    Bound,
    Event,
)
from trivpn.reverse.frames import (
    ABSOLUTE_MAX_FRAME,
    MAX_BINDING_NAME,
    MAX_BINDINGS,
    MAX_TEXT,
    PRE_AUTH_MAX_FRAME,
    PROTOCOL,
    Frame,
    FrameType,
    text,
)
from trivpn.reverse.scheduler import Scheduler

_U16 = struct.Struct("!H")
_HELLO = struct.Struct("!16s16sII")
_HELLO_ACK = struct.Struct("!32sIII")
_BIND_OK = struct.Struct("!HI")
_BIND_OK2 = struct.Struct("!IB")  # lease | count, then count x port u16
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def check_binding_name(name: str) -> str | None:
    """Why `name` cannot name a binding, or None (a DNS label: it may become a host name)."""
    if len(name) > MAX_BINDING_NAME:
        return f"is longer than {MAX_BINDING_NAME} characters"
    if not set(name) <= _NAME_CHARS or name.startswith("-") or name.endswith("-"):
        return "may hold only lowercase letters, digits and inner '-'"
    return None


def encode_bindings(bindings: tuple[Binding, ...]) -> bytes:
    out = bytearray([len(bindings)])
    for b in bindings:
        name = b.name.encode()
        out += _U16.pack(b.port) + bytes([len(name)]) + name
    return bytes(out)


def decode_bindings(payload: bytes) -> tuple[Binding, ...]:
    """The protocol-2 BIND payload; RemoteProtocolError if it is not exactly well-formed."""
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
        name = raw.decode("ascii", "replace")
        why = check_binding_name(name)
        if why is not None:
            raise RemoteProtocolError(f"binding name {text(raw)!r} {why}")
        out.append(Binding(port, name))
        pos += 3 + size
    if pos != len(payload):
        raise RemoteProtocolError("BIND payload has trailing bytes")
    return tuple(out)


_CLIENT_LABEL = b"trivpn-reverse-v1 client"
_RELAY_LABEL = b"trivpn-reverse-v1 relay"


class State(enum.Enum):
    INIT = "INIT"
    HANDSHAKEN = "HANDSHAKEN"
    AUTHENTICATED = "AUTHENTICATED"
    BOUND = "BOUND"
    FORWARDING = "FORWARDING"  # the session's, once a stream opened
    CLOSED = "CLOSED"  # the session's


@dataclass(slots=True, frozen=True)
class HandshakeFailed:
    """The handshake ended the session (refused token or bind); not a protocol error."""

    reason: str
    by_peer: bool


def auth_mac(token: bytes, label: bytes, challenge: bytes, nonce: bytes, client_id: bytes) -> bytes:
    return hmac.new(token, label + challenge + nonce + client_id, hashlib.sha256).digest()


class Handshake:
    """INIT → HANDSHAKEN → AUTHENTICATED → BOUND for one role; see the module docstring."""

    def __init__(
        self,
        role: str,
        config: SessionConfig,
        scheduler: Scheduler,
        events: list[Event],
        *,
        tokens: Mapping[str, bytes] | None,
        token: bytes,
        client_id: bytes,
        requested_port: int,
        random: bytes,
        bindings: tuple[Binding, ...] | None = None,
    ) -> None:
        if len(random) < 32:
            raise LocalProtocolError("random must be at least 32 bytes")
        self.role = role
        self.config = config
        self.state = State.INIT
        self.name = ""  # relay: the name of the token that matched
        self.port = 0
        self.ports: tuple[int, ...] = ()  # one per binding, once bound
        self.lease = 0
        self.protocol = 1  # negotiated in HELLO / HELLO_ACK
        self.bindings: tuple[Binding, ...] = ()  # client: asked for; relay: requested
        self.heartbeat = config.heartbeat  # the client adopts the relay's
        self.peer_window = 0
        self.peer_max_frame = PRE_AUTH_MAX_FRAME
        self.bind_asked = False
        self._scheduler = scheduler
        self._events = events
        self._tokens = dict(tokens or {})
        self._token = token
        if role == "client":
            if not token:
                raise LocalProtocolError("a client session needs a token")
            if len(client_id) != 16:
                raise LocalProtocolError("client id must be 16 bytes")
            self.bindings = bindings or (Binding(requested_port),)
            self._check_bindings()
            self.client_id = client_id
            self._nonce = random[:16]
            self._challenge = b""
            hello = _HELLO.pack(self._nonce, client_id, config.window, config.max_frame)
            if len(self.bindings) > 1 or self.bindings[0].name:
                self.protocol = PROTOCOL  # a proposal until HELLO_ACK
                hello += _U16.pack(PROTOCOL)
            scheduler.control(FrameType.HELLO, payload=hello)
        else:
            if not self._tokens or not all(self._tokens.values()):
                raise LocalProtocolError("a relay session needs at least one non-empty token")
            self.client_id = b""
            self._nonce = b""
            self._challenge = random[:32]

    def handle(self, f: Frame) -> HandshakeFailed | None:
        """One frame before BOUND; raises RemoteProtocolError if it is not legal now."""
        if self.role == "relay":
            return self._relay(f)
        return self._client(f)

    # relay side ----------------------------------------------------------------------

    def accept_bind(self, port: int, lease: int) -> None:
        self.accept_binds((port,), lease)

    def accept_binds(self, ports: tuple[int, ...] | list[int], lease: int) -> None:
        """One port per requested binding, in order."""
        if self.role != "relay" or self.state is not State.AUTHENTICATED or not self.bind_asked:
            raise LocalProtocolError(f"accept_bind in state {self.state.value}")
        if len(ports) != len(self.bindings) or not all(1 <= p <= 65535 for p in ports):
            raise LocalProtocolError(f"{len(ports)} ports for {len(self.bindings)} bindings")
        self.ports = tuple(ports)
        self.port, self.lease = ports[0], lease
        if self.protocol == 1:
            payload = _BIND_OK.pack(ports[0], lease)
        else:
            payload = _BIND_OK2.pack(lease, len(ports)) + b"".join(_U16.pack(p) for p in ports)
        self._scheduler.control(FrameType.BIND_OK, payload=payload)
        self.state = State.BOUND

    def reject_bind(self, reason: str) -> HandshakeFailed:
        if self.role != "relay" or self.state is not State.AUTHENTICATED:
            raise LocalProtocolError(f"reject_bind in state {self.state.value}")
        self._scheduler.control(FrameType.BIND_ERR, payload=reason.encode()[:MAX_TEXT])
        return HandshakeFailed(f"bind refused: {reason}", by_peer=False)

    def _relay(self, f: Frame) -> HandshakeFailed | None:
        t = f.type
        if self.state is State.INIT and t is FrameType.HELLO:
            nonce, client_id, window, max_frame = _HELLO.unpack_from(f.payload)
            self._set_peer_limits(window, max_frame)
            self._nonce, self.client_id = nonce, client_id
            hb_ms = int(self.heartbeat * 1000)
            ack = _HELLO_ACK.pack(self._challenge, self.config.window, self.config.max_frame, hb_ms)
            if len(f.payload) > _HELLO.size:
                offered = _U16.unpack_from(f.payload, _HELLO.size)[0]
                if offered < 2:
                    raise RemoteProtocolError(f"extended HELLO with protocol {offered}")
                self.protocol = min(offered, PROTOCOL)
                ack += _U16.pack(self.protocol)
            self._scheduler.control(FrameType.HELLO_ACK, payload=ack)
            self.state = State.HANDSHAKEN
        elif self.state is State.HANDSHAKEN and t is FrameType.AUTH:
            return self._check_auth(f.payload)
        elif self.state is State.AUTHENTICATED and t is FrameType.BIND and not self.bind_asked:
            if self.protocol == 1:
                if len(f.payload) != 2:
                    raise RemoteProtocolError(f"BIND frame of {len(f.payload)} bytes, expected 2")
                self.bindings = (Binding(_U16.unpack(f.payload)[0]),)
            else:
                self.bindings = decode_bindings(f.payload)
            self.bind_asked = True
            self._events.append(BindRequested(self.bindings[0].port, self.bindings))
        else:
            raise self._illegal(f)
        return None

    def _check_auth(self, answer: bytes) -> HandshakeFailed | None:
        matched = ""
        for name, token in self._tokens.items():  # no early exit: time says nothing
            expect = auth_mac(token, _CLIENT_LABEL, self._challenge, self._nonce, self.client_id)
            if hmac.compare_digest(expect, answer) and not matched:
                matched = name
        if not matched:
            self._scheduler.control(FrameType.AUTH_ERR, payload=b"invalid token")
            self._events.append(AuthFailed("the client presented a wrong token"))
            return HandshakeFailed("authentication failed: wrong token", by_peer=False)
        self.name = matched
        token = self._tokens[matched]
        proof = auth_mac(token, _RELAY_LABEL, self._challenge, self._nonce, self.client_id)
        self._scheduler.control(FrameType.AUTH_OK, payload=proof)
        self.state = State.AUTHENTICATED
        self.bind_asked = False
        self._events.append(Authenticated(matched, self.client_id))
        return None

    # client side ---------------------------------------------------------------------

    def _client(self, f: Frame) -> HandshakeFailed | None:
        t = f.type
        if self.state is State.INIT and t is FrameType.HELLO_ACK:
            challenge, window, max_frame, hb_ms = _HELLO_ACK.unpack_from(f.payload)
            self._set_peer_limits(window, max_frame)
            self._client_protocol(f.payload)
            if not 50 <= hb_ms <= 3_600_000:
                raise RemoteProtocolError(f"heartbeat interval {hb_ms} ms out of range")
            self.heartbeat = hb_ms / 1000
            self._challenge = challenge
            mac = auth_mac(self._token, _CLIENT_LABEL, challenge, self._nonce, self.client_id)
            self._scheduler.control(FrameType.AUTH, payload=mac)
            self.state = State.HANDSHAKEN
        elif self.state is State.HANDSHAKEN and t is FrameType.AUTH_ERR:
            reason = "authentication failed: the relay rejected the token"
            self._events.append(AuthFailed(reason))
            return HandshakeFailed(reason, by_peer=True)
        elif self.state is State.HANDSHAKEN and t is FrameType.AUTH_OK:
            expect = auth_mac(
                self._token, _RELAY_LABEL, self._challenge, self._nonce, self.client_id
            )
            if not hmac.compare_digest(expect, f.payload):
                raise RemoteProtocolError("the relay could not prove it knows the token")
            self.state = State.AUTHENTICATED
            self._events.append(Authenticated("", self.client_id))
            if self.protocol == 1:
                bind = _U16.pack(self.bindings[0].port)
            else:
                bind = encode_bindings(self.bindings)
            self._scheduler.control(FrameType.BIND, payload=bind)
        elif self.state is State.AUTHENTICATED and t is FrameType.BIND_OK:
            self.ports, self.lease = self._bind_ok(f.payload)
            self.port = self.ports[0]
            self.state = State.BOUND
            self._events.append(Bound(self.port, self.lease, self.ports))
        elif self.state is State.AUTHENTICATED and t is FrameType.BIND_ERR:
            reason = f"the relay refused the bind: {text(f.payload)}"
            self._events.append(BindFailed(reason))
            return HandshakeFailed(reason, by_peer=True)
        else:
            raise self._illegal(f)
        return None

    def _client_protocol(self, ack: bytes) -> None:
        """The protocol the relay chose; an extended ack answers only an extended HELLO."""
        extended = len(ack) > _HELLO_ACK.size
        if extended != (self.protocol > 1):
            raise RemoteProtocolError(
                "HELLO_ACK form does not match our HELLO (protocol negotiation broken)"
            )
        if extended:
            chosen = _U16.unpack_from(ack, _HELLO_ACK.size)[0]
            if not 2 <= chosen <= self.protocol:
                raise RemoteProtocolError(f"the relay chose protocol {chosen}")
            self.protocol = chosen

    def _bind_ok(self, payload: bytes) -> tuple[tuple[int, ...], int]:
        if self.protocol == 1:
            if len(payload) != _BIND_OK.size:
                raise RemoteProtocolError(f"BIND_OK frame of {len(payload)} bytes, expected 6")
            port, lease = _BIND_OK.unpack(payload)
            ports: tuple[int, ...] = (port,)
        else:
            n = len(self.bindings)
            if len(payload) != _BIND_OK2.size + 2 * n or payload[4] != n:
                raise RemoteProtocolError(f"BIND_OK does not carry {n} ports")
            lease = _BIND_OK2.unpack_from(payload)[0]
            ports = tuple(_U16.unpack_from(payload, _BIND_OK2.size + 2 * i)[0] for i in range(n))
        if 0 in ports:
            raise RemoteProtocolError("the relay bound port 0")
        return ports, lease

    # helpers -------------------------------------------------------------------------

    def _check_bindings(self) -> None:
        if not 1 <= len(self.bindings) <= MAX_BINDINGS:
            raise LocalProtocolError(f"1 to {MAX_BINDINGS} bindings per session")
        for b in self.bindings:
            if not 0 <= b.port <= 65535:
                raise LocalProtocolError("requested port must be 0..65535")
            why = check_binding_name(b.name)
            if why is not None:
                raise LocalProtocolError(f"binding name {b.name!r} {why}")

    def _set_peer_limits(self, window: int, max_frame: int) -> None:
        if not 1024 <= window <= MAX_WINDOW:
            raise RemoteProtocolError(f"peer window {window} out of range")
        if not PRE_AUTH_MAX_FRAME <= max_frame <= ABSOLUTE_MAX_FRAME:
            raise RemoteProtocolError(f"peer max frame {max_frame} out of range")
        self.peer_window = window
        self.peer_max_frame = max_frame

    def _illegal(self, frame: Frame) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"{frame.type.name} frame is not allowed in state {self.state.value} ({self.role} side)"
        )
