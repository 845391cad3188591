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

Named binds (HTTP routing by Host / TLS by SNI, trivpn/reverse/http): a client that asks
for a subdomain sends the long BIND (port u16 | routes u8 | length u8 | label) and gets
the long BIND_OK (port u16 | lease u32 | http port u16 | https port u16 | length u8 |
host). Compatibility: without a subdomain both frames keep their old 2- and 6-byte form,
so old and new ends interoperate; the relay answers the long form only to the long BIND,
and each side refuses the other form; a relay older than this refuses the long BIND as a
protocol error (its decoder wanted 2 bytes).

Protocol revision (frames.PROTOCOL), for several port bindings on one session: a client
with one binding (plain or named) sends the protocol-1 HELLO (40 bytes) and speaks
protocol 1 as above, so it works with any relay. A client with several bindings appends
the highest protocol it speaks (u16) to HELLO; the relay answers with the extended
HELLO_ACK carrying min(its own, the client's), and both use that. An extended HELLO_ACK
answers only an extended HELLO, and a protocol below 2 in either is a protocol error. A
relay of protocol 1 refuses the 42-byte HELLO by its size, never misreads it. Protocol 2
changes BIND / BIND_OK (lists, bindings.py) and OPEN (the binding index first); one
refused binding refuses the bind. A named (subdomain) bind is not part of protocol 2: it
keeps a session of its own.

Takeover proof (commit and reveal). Several clients may share a token, and the client id
travels in clear in HELLO, so token + client id must not be enough to take over another
client's live session or leased port. AUTH therefore also carries `reveal`, the client's
current takeover key, and `commit`, the SHA-256 of the key it will reveal next time; the
MAC covers both. The relay keeps the commitment of an owner's last bound session and lets
a new session of that owner take over only if SHA-256(reveal) matches it
(`takeover_proven`). A key is on the wire once, when it is spent; the one that proves the
next takeover never is, so replaying what an eavesdropper saw is refused. The client
moves to its next key once BIND_OK came (the relay stored the commitment just before).

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

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.reverse.bindings import (
    check_label,
    decode_bind_ok,
    decode_bindings,
    encode_bind_ok,
    encode_bindings,
)
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


#: BIND_ERR reasons start with this when a takeover lacked its proof (the client then
#: starts over with a new identity instead of asking again).
TAKEOVER_REFUSED = "takeover refused"


#: A client's reasons when the relay's answer to HELLO never came: it closed the
#: connection with nothing, or what it sent was TLS (expose adds what to check).
RELAY_SILENT = "the relay closed the connection without answering"
RELAY_SPEAKS_TLS = "the relay answered in TLS"


def key_commitment(key: bytes) -> bytes:
    """What a client announces for the takeover key it will reveal next time."""
    return hashlib.sha256(b"trivpn-reverse takeover" + key).digest()


def takeover_proven(commitment: bytes, reveal: bytes) -> bool:
    """A new session may take over the owner's previous one: it revealed the key that
    session committed to."""
    return hmac.compare_digest(key_commitment(reveal), commitment)


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
        bindings: tuple[Binding, ...] | None = None,
        resume_key: bytes = b"",
        next_key: bytes = b"",
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
        self.bind_named = False  # the BIND (relay: received; client: sent) named a subdomain
        self.host = ""  # named bind: the public host name
        self.http_port = self.https_port = 0
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
            if len(self.bindings) > 1 and requested_name:
                raise LocalProtocolError("a named bind cannot share its session with others")
            requested_port = self.bindings[0].port
            if requested_name and not (
                len(requested_name) <= 63 and requested_name.isascii() and 1 <= routes <= 3
            ):
                raise LocalProtocolError("bad subdomain or routes")
            self._bind = _U16.pack(requested_port)
            if requested_name:
                self.bind_named = True
                self._bind += bytes([routes, len(requested_name)]) + requested_name.encode()
            # not given: derived from `random`, good for one run of a client
            resume_key = resume_key or hashlib.sha256(b"resume" + random).digest()
            next_key = next_key or hashlib.sha256(b"next" + random).digest()
            if len(resume_key) != 32 or len(next_key) != 32:
                raise LocalProtocolError("takeover keys must be 32 bytes")
            self.client_id = client_id
            self._reveal = resume_key
            self._commit = key_commitment(next_key)
            self._nonce = random[:16]
            self._challenge = b""
            hello = _HELLO.pack(self._nonce, client_id, config.start_window, config.max_frame)
            if len(self.bindings) > 1:
                self.protocol = PROTOCOL  # a proposal until HELLO_ACK
                hello += _U16.pack(PROTOCOL)
                self._bind = encode_bindings(self.bindings)
            scheduler.control(FrameType.HELLO, payload=hello)
        else:
            if not self._tokens or not all(self._tokens.values()):
                raise LocalProtocolError("a relay session needs at least one non-empty token")
            self.client_id = b""
            self._reveal = self._commit = b""
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
        if self.protocol > 1:
            raise LocalProtocolError("accept_bind on a protocol-2 session: use accept_binds")
        self._check_accept((port,))
        self.ports = (port,)
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

    def accept_binds(self, ports: tuple[int, ...] | list[int], lease: int) -> None:
        """One port per requested binding, in order (either protocol; no named bind)."""
        self._check_accept(tuple(ports))
        if self.protocol == 1:
            if self.bind_named:
                raise LocalProtocolError("a named bind is answered by accept_bind")
            self.accept_bind(ports[0], lease)
            return
        if 0 in ports:
            raise LocalProtocolError("protocol 2 binds ports only, never port 0")
        self.ports = tuple(ports)
        self.port, self.lease = ports[0], lease
        self._scheduler.control(FrameType.BIND_OK, payload=encode_bind_ok(self.ports, lease))
        self.state = State.BOUND

    def _check_accept(self, ports: tuple[int, ...]) -> None:
        if self.role != "relay" or self.state is not State.AUTHENTICATED or not self.bind_asked:
            raise LocalProtocolError(f"accept_bind in state {self.state.value}")
        if len(ports) != len(self.bindings) or not all(0 <= p <= 65535 for p in ports):
            raise LocalProtocolError(f"{len(ports)} ports for {len(self.bindings)} bindings")

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
            ack = _HELLO_ACK.pack(
                self._challenge, self.config.start_window, self.config.max_frame, hb_ms
            )
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
            self.bind_asked = True
            self._events.append(self._bind_request(f.payload))
        else:
            raise self._illegal(f)
        return None

    def _bound_id(self) -> bytes:
        """What both MACs cover besides the challenge and nonce."""
        return self.client_id + self._reveal + self._commit

    def _check_auth(self, payload: bytes) -> HandshakeFailed | None:
        answer, self._reveal, self._commit = payload[:32], payload[32:64], payload[64:96]
        matched = ""
        for name, token in self._tokens.items():  # no early exit: time says nothing
            expect = auth_mac(token, _CLIENT_LABEL, self._challenge, self._nonce, self._bound_id())
            if hmac.compare_digest(expect, answer) and not matched:
                matched = name
        if not matched:
            self._scheduler.control(FrameType.AUTH_ERR, payload=b"invalid token")
            self._events.append(AuthFailed("the client presented a wrong token"))
            return HandshakeFailed("authentication failed: wrong token", by_peer=False)
        self.name = matched
        token = self._tokens[matched]
        proof = auth_mac(token, _RELAY_LABEL, self._challenge, self._nonce, self._bound_id())
        self._scheduler.control(FrameType.AUTH_OK, payload=proof)
        self.state = State.AUTHENTICATED
        self.bind_asked = False
        self._events.append(Authenticated(matched, self.client_id, self._reveal, self._commit))
        return None

    def _bind_request(self, p: bytes) -> BindRequested:
        if self.protocol > 1:
            self.bindings = decode_bindings(p)
            return BindRequested(self.bindings[0].port, bindings=self.bindings)
        if len(p) == 2:
            self.bindings = (Binding(_U16.unpack(p)[0]),)
            return BindRequested(self.bindings[0].port, bindings=self.bindings)
        if len(p) < 5 or len(p) != 4 + p[3] or not 1 <= p[2] <= 3:
            raise RemoteProtocolError(f"malformed BIND of {len(p)} bytes")
        name = p[4:]
        if not name.isascii():
            raise RemoteProtocolError("BIND with a non-ASCII subdomain")
        self.bind_named = True
        self.bindings = (Binding(_U16.unpack_from(p)[0]),)
        return BindRequested(self.bindings[0].port, name.decode("ascii"), p[2], self.bindings)

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
            mac = auth_mac(self._token, _CLIENT_LABEL, challenge, self._nonce, self._bound_id())
            self._scheduler.control(FrameType.AUTH, payload=mac + self._reveal + self._commit)
            self.state = State.HANDSHAKEN
        elif self.state is State.HANDSHAKEN and t is FrameType.AUTH_ERR:
            reason = "authentication failed: the relay rejected the token"
            self._events.append(AuthFailed(reason))
            return HandshakeFailed(reason, by_peer=True)
        elif self.state is State.HANDSHAKEN and t is FrameType.AUTH_OK:
            expect = auth_mac(
                self._token, _RELAY_LABEL, self._challenge, self._nonce, self._bound_id()
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

    def _bound(self, p: bytes) -> None:
        if self.protocol > 1:
            self.ports, self.lease = decode_bind_ok(p, len(self.bindings))
            self.port = self.ports[0]
        elif not self.bind_named:
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
        if self.protocol == 1:
            self.ports = (self.port,)
        self.state = State.BOUND
        self._events.append(
            Bound(self.port, self.lease, self.host, self.http_port, self.https_port, self.ports)
        )

    # helpers -------------------------------------------------------------------------

    def _check_bindings(self) -> None:
        if not 1 <= len(self.bindings) <= MAX_BINDINGS:
            raise LocalProtocolError(f"1 to {MAX_BINDINGS} bindings per session")
        for b in self.bindings:
            if not 0 <= b.port <= 65535:
                raise LocalProtocolError("requested port must be 0..65535")
            why = check_label(b.label)
            if why is not None:
                raise LocalProtocolError(f"binding label {b.label!r} {why}")

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
