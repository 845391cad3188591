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
wire. The relay answers BIND only when its application chose a port (`accept_bind` or
`reject_bind`); the client binds right after AUTH_OK.

Named binds (HTTP routing by Host / TLS by SNI, trivpn/reverse/http): a client that asks
for a subdomain sends the long BIND (port u16 | routes u8 | length u8 | label) and gets
the long BIND_OK (port u16 | lease u32 | http port u16 | https port u16 | length u8 |
host). Compatibility: without a subdomain both frames keep their old 2- and 6-byte form,
so old and new ends interoperate; the relay answers the long form only to the long BIND,
and each side refuses the other form; a relay older than this refuses the long BIND as a
protocol error (its decoder wanted 2 bytes).

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
    BindRequested,
    Bound,
    Event,
)
from trivpn.reverse.frames import (
    ABSOLUTE_MAX_FRAME,
    MAX_TEXT,
    PRE_AUTH_MAX_FRAME,
    Frame,
    FrameType,
    text,
)
from trivpn.reverse.scheduler import Scheduler

_U16 = struct.Struct("!H")
_HELLO = struct.Struct("!16s16sII")
_HELLO_ACK = struct.Struct("!32sIII")
_BIND_OK = struct.Struct("!HI")
_NAMED_OK = struct.Struct("!HIHHB")  # port | lease | http port | https port | host length
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
        requested_name: str = "",
        routes: int = 0,
    ) -> None:
        if len(random) < 32:
            raise LocalProtocolError("random must be at least 32 bytes")
        self.role = role
        self.config = config
        self.state = State.INIT
        self.name = ""  # relay: the name of the token that matched
        self.port = 0
        self.lease = 0
        self.heartbeat = config.heartbeat  # the client adopts the relay's
        self.peer_window = 0
        self.peer_max_frame = PRE_AUTH_MAX_FRAME
        self.bind_asked = False
        self.bind_named = False  # the BIND (relay: received; client: sent) named a subdomain
        self.host = ""  # named bind: the public host name
        self.http_port = self.https_port = 0
        self._scheduler = scheduler
        self._events = events
        self._tokens = dict(tokens or {})
        self._token = token
        self._requested_port = requested_port
        if role == "client":
            if not token:
                raise LocalProtocolError("a client session needs a token")
            if len(client_id) != 16:
                raise LocalProtocolError("client id must be 16 bytes")
            if not 0 <= requested_port <= 65535:
                raise LocalProtocolError("requested port must be 0..65535")
            if requested_name and not (
                len(requested_name) <= 63 and requested_name.isascii() and 1 <= routes <= 3
            ):
                raise LocalProtocolError("bad subdomain or routes")
            self._bind = _U16.pack(requested_port)
            if requested_name:
                self.bind_named = True
                self._bind += bytes([routes, len(requested_name)]) + requested_name.encode()
            self.client_id = client_id
            self._nonce = random[:16]
            self._challenge = b""
            hello = _HELLO.pack(self._nonce, client_id, config.window, config.max_frame)
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

    def accept_bind(
        self, port: int, lease: int, *, host: str = "", http_port: int = 0, https_port: int = 0
    ) -> None:
        if self.role != "relay" or self.state is not State.AUTHENTICATED or not self.bind_asked:
            raise LocalProtocolError(f"accept_bind in state {self.state.value}")
        self.port, self.lease = port, lease
        payload = _BIND_OK.pack(port, lease)
        if self.bind_named:
            name = host.encode("ascii")
            if not 0 < len(name) <= 253:
                raise LocalProtocolError("a named bind needs its host name")
            payload = _NAMED_OK.pack(port, lease, http_port, https_port, len(name)) + name
            self.host, self.http_port, self.https_port = host, http_port, https_port
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
            nonce, client_id, window, max_frame = _HELLO.unpack(f.payload)
            self._set_peer_limits(window, max_frame)
            self._nonce, self.client_id = nonce, client_id
            hb_ms = int(self.heartbeat * 1000)
            ack = _HELLO_ACK.pack(self._challenge, self.config.window, self.config.max_frame, hb_ms)
            self._scheduler.control(FrameType.HELLO_ACK, payload=ack)
            self.state = State.HANDSHAKEN
        elif self.state is State.HANDSHAKEN and t is FrameType.AUTH:
            return self._check_auth(f.payload)
        elif self.state is State.AUTHENTICATED and t is FrameType.BIND and not self.bind_asked:
            self.bind_asked = True
            self._events.append(self._bind_request(f.payload))
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

    def _bind_request(self, p: bytes) -> BindRequested:
        if len(p) == 2:
            return BindRequested(_U16.unpack(p)[0])
        if len(p) < 5 or len(p) != 4 + p[3] or not 1 <= p[2] <= 3:
            raise RemoteProtocolError(f"malformed BIND of {len(p)} bytes")
        name = p[4:]
        if not name.isascii():
            raise RemoteProtocolError("BIND with a non-ASCII subdomain")
        self.bind_named = True
        return BindRequested(_U16.unpack_from(p)[0], name.decode("ascii"), p[2])

    # client side ---------------------------------------------------------------------

    def _client(self, f: Frame) -> HandshakeFailed | None:
        t = f.type
        if self.state is State.INIT and t is FrameType.HELLO_ACK:
            challenge, window, max_frame, hb_ms = _HELLO_ACK.unpack(f.payload)
            self._set_peer_limits(window, max_frame)
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
            self._scheduler.control(FrameType.BIND, payload=self._bind)
        elif self.state is State.AUTHENTICATED and t is FrameType.BIND_OK:
            self._bound(f.payload)
        elif self.state is State.AUTHENTICATED and t is FrameType.BIND_ERR:
            reason = f"the relay refused the bind: {text(f.payload)}"
            self._events.append(BindFailed(reason))
            return HandshakeFailed(reason, by_peer=True)
        else:
            raise self._illegal(f)
        return None

    def _bound(self, p: bytes) -> None:
        if not self.bind_named:
            if len(p) != _BIND_OK.size:
                raise RemoteProtocolError(f"BIND_OK of {len(p)} bytes, expected {_BIND_OK.size}")
            self.port, self.lease = _BIND_OK.unpack(p)
            if self.port == 0:
                raise RemoteProtocolError("the relay bound port 0")
        else:
            if len(p) <= _NAMED_OK.size or len(p) != _NAMED_OK.size + p[_NAMED_OK.size - 1]:
                raise RemoteProtocolError(f"malformed named BIND_OK of {len(p)} bytes")
            self.port, self.lease, self.http_port, self.https_port, _ = _NAMED_OK.unpack_from(p)
            host = p[_NAMED_OK.size :].decode("ascii", "replace")
            if not all(c.isalnum() or c in "-._" for c in host):
                raise RemoteProtocolError("the relay sent a bad host name")
            self.host = host
        self.state = State.BOUND
        self._events.append(
            Bound(self.port, self.lease, self.host, self.http_port, self.https_port)
        )

    # helpers -------------------------------------------------------------------------

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
