"""Session and stream state machines of the reverse tunnel (pure, sans-IO).

Theory of operation
-------------------
One `Session` runs each end of one tunnel connection (`role` is "relay" or "client").
Bytes from the connection go in with `receive_data(data, now)`; bytes for the connection
come out of `data_to_send(now)`; what happened comes out of `events()`; time enters only
as `now`, and `get_timer()` / `handle_timer(now)` drive heartbeats and deadlines.

Session states, enforced on both sides (any frame not legal in the current state closes
the session with GOAWAY(PROTOCOL)):

    client: INIT --HELLO--> (HELLO_ACK) HANDSHAKEN --AUTH--> (AUTH_OK) AUTHENTICATED
            --BIND--> (BIND_OK) BOUND --(first OPEN)--> FORWARDING
    relay:  INIT (HELLO) --HELLO_ACK--> HANDSHAKEN (AUTH) --AUTH_OK--> AUTHENTICATED
            (BIND) --BIND_OK--> BOUND --(first open_stream)--> FORWARDING

Authentication is challenge-response: the relay sends a random challenge, the client
answers HMAC-SHA256(token, label | challenge | client nonce | client id), the relay
compares against every configured token with `hmac.compare_digest` (all of them, so the
time taken does not say which token was close), and proves in AUTH_OK that it knows the
token too. The token never crosses the wire. Until the relay says BIND_OK, frames are
limited to 256 bytes and the whole exchange to `handshake_timeout` seconds.

Streams: only the relay opens them (one per public TCP connection). Data may follow OPEN
immediately; the client answers OPEN|ACK once the local service accepted, or RST.
Each direction has its own *credit*: the receiver grants `window` bytes per stream at
the start (announced in HELLO / HELLO_ACK) and grants more only as the application
*consumes* bytes (`consumed(sid, n)`), so a stalled reader holds at most one window and
never blocks the connection: the session keeps reading and other streams keep moving.
A peer that sends beyond its credit broke the rules for that stream only: it is reset.
A session-wide cap on bytes received but not yet consumed defers window updates while
it is exceeded, bounding memory to the cap plus one window per stalled stream.

FIN (DATA with the FIN flag) ends one direction; the other keeps flowing until its own
FIN. RST aborts both. A stream is forgotten when both FINs have been sent, or on RST;
frames arriving for a forgotten stream are late, not hostile, and are ignored (counted).
A stream half-closed for longer than `linger` is reset, so a peer that never sends its
FIN cannot leak it.

Output is scheduled in two classes: control frames (pings, pongs, window updates, opens,
resets, handshake) always leave first; then DATA round-robin across streams with credit,
in chunks of at most `chunk` bytes and `burst` bytes per call, so a heartbeat never waits
behind more than one burst of bulk data.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.reverse.frames import (
    ABSOLUTE_MAX_FRAME,
    DEFAULT_MAX_FRAME,
    MAX_TEXT,
    PRE_AUTH_MAX_FRAME,
    ErrorCode,
    Flag,
    Frame,
    FrameDecoder,
    FrameType,
    encode,
    header,
    text,
)

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_HELLO = struct.Struct("!16s16sII")
_HELLO_ACK = struct.Struct("!32sIII")
_BIND_OK = struct.Struct("!HI")
_CLIENT_LABEL = b"trivpn-reverse-v1 client"
_RELAY_LABEL = b"trivpn-reverse-v1 relay"
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**32 - 1


class State(enum.Enum):
    INIT = "INIT"
    HANDSHAKEN = "HANDSHAKEN"
    AUTHENTICATED = "AUTHENTICATED"
    BOUND = "BOUND"
    FORWARDING = "FORWARDING"
    CLOSED = "CLOSED"


class StreamClosedError(LocalProtocolError):
    """A write on a stream (or session) that is already closed: ours to handle, not a crash."""


@dataclass(slots=True)
class SessionConfig:
    """Tunables; defaults fit a 1 Gbit/s × 20 ms path per stream and 64 MiB per session."""

    window: int = 2 * 1024 * 1024  # per-stream receive credit we grant
    session_buffer: int = 64 * 1024 * 1024  # cap on received-but-unconsumed bytes
    max_frame: int = DEFAULT_MAX_FRAME  # largest payload we accept after authentication
    chunk: int = 64 * 1024  # largest DATA payload we send
    burst: int = 256 * 1024  # bulk bytes per data_to_send() call, so control overtakes bulk
    send_buffer: int = 256 * 1024  # per-stream unsent bytes before the producer must wait
    heartbeat: float = 10.0  # relay's choice wins (sent in HELLO_ACK)
    missed_heartbeats: int = 3
    handshake_timeout: float = 5.0
    max_streams: int = 65536
    linger: float = 300.0

    def check(self) -> None:
        if not 1024 <= self.window <= MAX_WINDOW:
            raise LocalProtocolError("window must be between 1 KiB and 2 GiB")
        if not PRE_AUTH_MAX_FRAME <= self.max_frame <= ABSOLUTE_MAX_FRAME:
            raise LocalProtocolError("max frame must be between 256 bytes and 64 MiB")
        if not 0.05 <= self.heartbeat <= 3600 or self.missed_heartbeats < 1:
            raise LocalProtocolError("heartbeat must be 0.05..3600 s, missed >= 1")


# ---------------------------------------------------------------------------------- events


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


# --------------------------------------------------------------------------------- streams


@dataclass(slots=True)
class _Stream:
    sid: int
    send_credit: int
    recv_credit: int  # bytes the peer may still send before our next WINDOW
    accepted: bool = False
    pending: deque[bytes] | None = None  # made on first use: an empty deque costs ~0.7 KiB
    pending_len: int = 0
    fin_queued: bool = False
    fin_sent: bool = False
    fin_received: bool = False
    buffered: int = 0  # received, not yet consumed
    unreturned: int = 0  # consumed, credit not yet given back
    want_writable: bool = False
    in_ready: bool = False
    half_closed_at: float | None = None


def auth_mac(token: bytes, label: bytes, challenge: bytes, nonce: bytes, client_id: bytes) -> bytes:
    return hmac.new(token, label + challenge + nonce + client_id, hashlib.sha256).digest()


class Session:
    """One end of a tunnel connection. See the module docstring for the rules."""

    def __init__(
        self,
        role: str,
        now: float,
        config: SessionConfig | None = None,
        *,
        tokens: Mapping[str, bytes] | None = None,
        token: bytes = b"",
        client_id: bytes = b"",
        requested_port: int = 0,
        random: bytes | None = None,
    ) -> None:
        if role not in ("relay", "client"):
            raise LocalProtocolError(f"role must be relay or client, not {role!r}")
        self.role = role
        self.config = config or SessionConfig()
        self.config.check()
        self.state = State.INIT
        self.created = now
        self._decoder = FrameDecoder(PRE_AUTH_MAX_FRAME)
        self._control: list[bytes] = []
        self._events: list[Event] = []
        self._streams: dict[int, _Stream] = {}
        self._ready: deque[int] = deque()
        self._deferred: set[int] = set()
        self._linger_q: deque[tuple[float, int]] = deque()
        self.total_buffered = 0
        self.peer_window = 0
        self.peer_max_frame = PRE_AUTH_MAX_FRAME
        self.heartbeat = self.config.heartbeat
        self._last_rx = now
        self._next_ping = float("inf")
        self._ping_sent: dict[bytes, float] = {}
        self._ping_seq = 0
        self._next_sid = 1
        self._highest_sid = 0
        self.ignored = 0
        self.close_reason: str | None = None
        self.name = ""
        self.port = 0
        self.lease = 0
        rnd = random if random is not None else secrets.token_bytes(32)
        if len(rnd) < 32:
            raise LocalProtocolError("random must be at least 32 bytes")
        self._tokens = dict(tokens or {})
        self._token = token
        self._requested_port = requested_port
        self._bind_asked = False
        if role == "client":
            if not token:
                raise LocalProtocolError("a client session needs a token")
            if len(client_id) != 16:
                raise LocalProtocolError("client id must be 16 bytes")
            if not 0 <= requested_port <= 65535:
                raise LocalProtocolError("requested port must be 0..65535")
            self.client_id = client_id
            self._nonce = rnd[:16]
            self._challenge = b""
            self._send_control(
                FrameType.HELLO,
                payload=_HELLO.pack(
                    self._nonce, client_id, self.config.window, self.config.max_frame
                ),
            )
        else:
            if not self._tokens or not all(self._tokens.values()):
                raise LocalProtocolError("a relay session needs at least one non-empty token")
            self.client_id = b""
            self._nonce = b""
            self._challenge = rnd[:32]

    # ------------------------------------------------------------------ public: inputs

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the connection. Raises RemoteProtocolError after closing the session."""
        if self.state is State.CLOSED or not data:
            return
        self._last_rx = now
        try:
            frames = self._decoder.feed(data)
            for frame in frames:
                self._handle(frame, now)
                if self.state is State.CLOSED:
                    return
        except RemoteProtocolError as exc:
            self._fail(ErrorCode.PROTOCOL, str(exc))
            raise

    def receive_eof(self, now: float) -> None:
        """The connection ended without GOAWAY."""
        if self.state is not State.CLOSED:
            self._closed_by_peer("the connection was closed", ErrorCode.INTERNAL)

    def close(self, reason: str = "closing", code: ErrorCode = ErrorCode.NORMAL) -> None:
        """Say GOAWAY and stop; every stream is reset (reported as StreamReset)."""
        if self.state is State.CLOSED:
            return
        reason_b = reason.encode()[:MAX_TEXT]
        self._send_control(FrameType.GOAWAY, payload=_U32.pack(code) + reason_b)
        self._finish(reason, code, by_peer=False)

    # relay side ----------------------------------------------------------------------

    def accept_bind(self, port: int, lease: int) -> None:
        if self.role != "relay" or self.state is not State.AUTHENTICATED or not self._bind_asked:
            raise LocalProtocolError(f"accept_bind in state {self.state.value}")
        self.port, self.lease = port, lease
        self._send_control(FrameType.BIND_OK, payload=_BIND_OK.pack(port, lease))
        self._enter_bound()

    def reject_bind(self, reason: str) -> None:
        if self.role != "relay" or self.state is not State.AUTHENTICATED:
            raise LocalProtocolError(f"reject_bind in state {self.state.value}")
        self._send_control(FrameType.BIND_ERR, payload=reason.encode()[:MAX_TEXT])
        self._finish(f"bind refused: {reason}", ErrorCode.NORMAL, by_peer=False)

    def open_stream(self, peer: str, now: float) -> int:
        """Relay: announce a new public connection; returns its stream id."""
        if self.role != "relay":
            raise LocalProtocolError("only the relay opens streams")
        if self.state not in (State.BOUND, State.FORWARDING):
            raise StreamClosedError(f"cannot open a stream in state {self.state.value}")
        if len(self._streams) >= self.config.max_streams:
            raise StreamClosedError("too many streams")
        sid = self._next_sid
        if sid > MAX_STREAM_ID:
            raise StreamClosedError("stream ids exhausted")
        self._next_sid += 1
        self._streams[sid] = _Stream(sid, self.peer_window, self.config.window)
        self._send_control(FrameType.OPEN, 0, sid, peer.encode()[:MAX_TEXT])
        self.state = State.FORWARDING
        return sid

    # client side ---------------------------------------------------------------------

    def accept_stream(self, sid: int) -> None:
        """Client: the local service accepted the connection for this stream."""
        st = self._streams.get(sid)
        if st is None or self.role != "client":
            raise StreamClosedError(f"stream {sid} is not open")
        if not st.accepted:
            st.accepted = True
            self._send_control(FrameType.OPEN, Flag.ACK, sid)

    # both ------------------------------------------------------------------------------

    def send_data(self, sid: int, data: bytes) -> bool:
        """Queue bytes on a stream; False means the producer should wait for StreamWritable."""
        st = self._writable_stream(sid)
        if data:
            if st.pending is None:
                st.pending = deque()
            st.pending.append(data)
            st.pending_len += len(data)
            self._mark_ready(st)
        if st.pending_len >= self.config.send_buffer:
            st.want_writable = True
            return False
        return True

    def send_fin(self, sid: int, now: float) -> None:
        """Half-close our direction once the queued bytes have gone."""
        st = self._writable_stream(sid)
        st.fin_queued = True
        self._mark_ready(st, force=True)

    def reset_stream(self, sid: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """Abort a stream both ways (local service unreachable, socket error, ...)."""
        st = self._streams.get(sid)
        if st is None or self.state is State.CLOSED:
            return
        self._send_control(FrameType.RST, 0, sid, _U32.pack(code))
        self._drop(st)

    def consumed(self, sid: int, n: int) -> None:
        """The application took `n` bytes of this stream's data: give the credit back."""
        st = self._streams.get(sid)
        if n <= 0 or st is None or self.state is State.CLOSED:
            return  # a forgotten stream's bytes stopped counting when it was forgotten
        n = min(n, st.buffered)
        self.total_buffered -= n
        st.buffered -= n
        st.unreturned += n
        if not st.fin_received and st.unreturned >= self.config.window // 2:
            if self.total_buffered < self.config.session_buffer:
                self._return_credit(st)
            else:
                self._deferred.add(sid)
        if self._deferred and self.total_buffered < self.config.session_buffer:
            for other in list(self._deferred):
                o = self._streams.get(other)
                if o is not None and not o.fin_received and o.unreturned:
                    self._return_credit(o)
            self._deferred.clear()

    @property
    def wants_to_send(self) -> bool:
        """Output is waiting: control frames, or streams with data and credit."""
        return bool(self._control or self._ready)

    def pending_bytes(self, sid: int) -> int:
        st = self._streams.get(sid)
        return st.pending_len if st is not None else 0

    # ------------------------------------------------------------------ public: outputs

    def events(self) -> list[Event]:
        ev, self._events = self._events, []
        return ev

    def data_to_send(self, now: float) -> list[bytes]:
        """Control frames first, then up to `burst` bytes of DATA round-robin (a batch)."""
        out = self._control
        self._control = []
        if self.state is State.CLOSED:
            self._ready.clear()
            return out
        budget = self.config.burst
        chunk = min(self.config.chunk, self.peer_max_frame)
        ready = self._ready
        streams = self._streams
        while budget > 0 and ready:
            sid = ready.popleft()
            st = streams.get(sid)
            if st is None:
                continue
            st.in_ready = False
            n = min(st.pending_len, st.send_credit, chunk, budget)
            if n > 0:
                payload = self._take(st, n)
                if not st.pending_len:
                    st.pending = None  # idle streams keep no deque
                st.send_credit -= n
                budget -= n
                fin = st.fin_queued and st.pending_len == 0
                out.append(header(FrameType.DATA, Flag.FIN if fin else 0, sid, n))
                out.append(payload)
            elif st.pending_len == 0 and st.fin_queued and not st.fin_sent:
                fin = True
                out.append(header(FrameType.DATA, Flag.FIN, sid, 0))
            else:
                continue  # no credit: WINDOW will put it back in the queue
            if fin:
                st.fin_sent = True
                self._after_fin(st, now)
                if sid not in streams:
                    continue
            if st.want_writable and st.pending_len <= self.config.send_buffer // 2:
                st.want_writable = False
                self._events.append(StreamWritable(sid))
            if (st.pending_len and st.send_credit > 0) or (st.fin_queued and not st.fin_sent):
                self._mark_ready(st)
        return out

    def get_timer(self) -> float:
        if self.state is State.CLOSED:
            return float("inf")
        if self.state not in (State.BOUND, State.FORWARDING):
            return self.created + self.config.handshake_timeout
        t = min(self._next_ping, self._last_rx + self.heartbeat * self.config.missed_heartbeats)
        if self._linger_q:
            t = min(t, self._linger_q[0][0])
        return t

    def handle_timer(self, now: float) -> None:
        if self.state is State.CLOSED:
            return
        if self.state not in (State.BOUND, State.FORWARDING):
            if now >= self.created + self.config.handshake_timeout:
                self.close(
                    f"handshake not finished within {self.config.handshake_timeout:g} s",
                    ErrorCode.TIMEOUT,
                )
            return
        expire = self._last_rx + self.heartbeat * self.config.missed_heartbeats
        if now >= expire:
            self.close(
                f"no heartbeat from the peer for {self.heartbeat * self.config.missed_heartbeats:g} s",
                ErrorCode.TIMEOUT,
            )
            return
        if now >= self._next_ping:
            self._ping_seq += 1
            opaque = _U32.pack(self._ping_seq) + _U32.pack(0)
            self._ping_sent[opaque] = now
            if len(self._ping_sent) > self.config.missed_heartbeats + 1:
                self._ping_sent.pop(next(iter(self._ping_sent)))
            self._send_control(FrameType.PING, payload=opaque)
            self._next_ping = now + self.heartbeat
        while self._linger_q and self._linger_q[0][0] <= now:
            _, sid = self._linger_q.popleft()
            st = self._streams.get(sid)
            if st is not None and st.half_closed_at is not None:
                if st.half_closed_at + self.config.linger <= now:
                    self.reset_stream(sid, ErrorCode.TIMEOUT)
                    self._events.append(StreamReset(sid, ErrorCode.TIMEOUT, by_peer=False))

    # ------------------------------------------------------------------ internals

    def _send_control(
        self, ftype: FrameType, flags: int = 0, sid: int = 0, payload: bytes = b""
    ) -> None:
        self._control.append(encode(ftype, flags, sid, payload))

    def _writable_stream(self, sid: int) -> _Stream:
        if self.state is State.CLOSED:
            raise StreamClosedError("the session is closed")
        st = self._streams.get(sid)
        if st is None:
            raise StreamClosedError(f"stream {sid} is closed")
        if st.fin_queued:
            raise StreamClosedError(f"stream {sid} is half-closed for writing")
        return st

    def _mark_ready(self, st: _Stream, force: bool = False) -> None:
        if not st.in_ready and (force or st.send_credit > 0):
            st.in_ready = True
            self._ready.append(st.sid)

    @staticmethod
    def _take(st: _Stream, n: int) -> bytes:
        assert st.pending is not None
        first = st.pending[0]
        if len(first) == n:
            st.pending.popleft()
            st.pending_len -= n
            return first
        if len(first) > n:
            st.pending[0] = first[n:]
            st.pending_len -= n
            return first[:n]
        parts: list[bytes] = []
        need = n
        while need:
            piece = st.pending.popleft()
            if len(piece) > need:
                st.pending.appendleft(piece[need:])
                piece = piece[:need]
            parts.append(piece)
            need -= len(piece)
        st.pending_len -= n
        return b"".join(parts)

    def _return_credit(self, st: _Stream) -> None:
        inc = st.unreturned
        st.unreturned = 0
        st.recv_credit += inc
        self._send_control(FrameType.WINDOW, 0, st.sid, _U32.pack(inc))

    def _after_fin(self, st: _Stream, now: float) -> None:
        if st.fin_sent and st.fin_received:
            self._forget(st)
            self._events.append(StreamClosed(st.sid))
        elif st.half_closed_at is None:
            st.half_closed_at = now
            self._linger_q.append((now + self.config.linger, st.sid))

    def _forget(self, st: _Stream) -> None:
        self._streams.pop(st.sid, None)
        self._deferred.discard(st.sid)
        self.total_buffered -= st.buffered
        st.buffered = 0
        st.pending = None
        st.pending_len = 0

    def _drop(self, st: _Stream) -> None:
        # buffered bytes still belong to the application until it calls consumed();
        # we only stop counting them against the session here
        self._forget(st)

    def _fail(self, code: ErrorCode, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self._send_control(FrameType.GOAWAY, payload=_U32.pack(code) + reason.encode()[:MAX_TEXT])
        self._finish(f"protocol error: {reason}", code, by_peer=False)

    def _closed_by_peer(self, reason: str, code: ErrorCode) -> None:
        self._finish(reason, code, by_peer=True)

    def _finish(self, reason: str, code: ErrorCode, *, by_peer: bool) -> None:
        self.state = State.CLOSED
        self.close_reason = reason
        for sid in list(self._streams):
            self._events.append(StreamReset(sid, ErrorCode.CANCEL, by_peer=by_peer))
            self._forget(self._streams[sid])
        self._ready.clear()
        self._events.append(SessionClosed(reason, code, by_peer))

    def _enter_bound(self) -> None:
        self.state = State.BOUND
        self._decoder.max_frame = self.config.max_frame
        self._next_ping = self._last_rx + self.heartbeat

    def _illegal(self, frame: Frame) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"{frame.type.name} frame is not allowed in state {self.state.value} ({self.role} side)"
        )

    # dispatch --------------------------------------------------------------------------

    def _handle(self, f: Frame, now: float) -> None:
        t = f.type
        if t is FrameType.GOAWAY:
            code = _U32.unpack_from(f.payload)[0] if len(f.payload) >= 4 else ErrorCode.PROTOCOL
            try:
                ecode = ErrorCode(code)
            except ValueError:
                ecode = ErrorCode.INTERNAL
            reason = text(f.payload[4:]) or ecode.name.lower()
            self._closed_by_peer(f"the peer closed the session: {reason}", ecode)
            return
        if self.state in (State.BOUND, State.FORWARDING):
            if t is FrameType.DATA:
                self._on_data(f, now)
            elif t is FrameType.WINDOW:
                self._on_window(f)
            elif t is FrameType.PING:
                self._on_ping(f, now)
            elif t is FrameType.OPEN:
                self._on_open(f)
            elif t is FrameType.RST:
                self._on_rst(f)
            else:
                raise self._illegal(f)
            return
        if self.role == "relay":
            self._handle_relay_handshake(f)
        else:
            self._handle_client_handshake(f)

    def _handle_relay_handshake(self, f: Frame) -> None:
        t = f.type
        if self.state is State.INIT and t is FrameType.HELLO:
            nonce, client_id, window, max_frame = _HELLO.unpack(f.payload)
            self._set_peer_limits(window, max_frame)
            self._nonce, self.client_id = nonce, client_id
            hb_ms = int(self.heartbeat * 1000)
            self._send_control(
                FrameType.HELLO_ACK,
                payload=_HELLO_ACK.pack(
                    self._challenge, self.config.window, self.config.max_frame, hb_ms
                ),
            )
            self.state = State.HANDSHAKEN
        elif self.state is State.HANDSHAKEN and t is FrameType.AUTH:
            matched = ""
            for name, token in self._tokens.items():  # no early exit: time says nothing
                expect = auth_mac(
                    token, _CLIENT_LABEL, self._challenge, self._nonce, self.client_id
                )
                if hmac.compare_digest(expect, f.payload) and not matched:
                    matched = name
            if not matched:
                self._send_control(FrameType.AUTH_ERR, payload=b"invalid token")
                self._events.append(AuthFailed("the client presented a wrong token"))
                self._finish("authentication failed: wrong token", ErrorCode.NORMAL, by_peer=False)
                return
            self.name = matched
            token = self._tokens[matched]
            proof = auth_mac(token, _RELAY_LABEL, self._challenge, self._nonce, self.client_id)
            self._send_control(FrameType.AUTH_OK, payload=proof)
            self.state = State.AUTHENTICATED
            self._bind_asked = False
            self._events.append(Authenticated(matched, self.client_id))
        elif self.state is State.AUTHENTICATED and t is FrameType.BIND and not self._bind_asked:
            self._bind_asked = True
            self._events.append(BindRequested(_U16.unpack(f.payload)[0]))
        else:
            raise self._illegal(f)

    def _handle_client_handshake(self, f: Frame) -> None:
        t = f.type
        if self.state is State.INIT and t is FrameType.HELLO_ACK:
            challenge, window, max_frame, hb_ms = _HELLO_ACK.unpack(f.payload)
            self._set_peer_limits(window, max_frame)
            if not 50 <= hb_ms <= 3_600_000:
                raise RemoteProtocolError(f"heartbeat interval {hb_ms} ms out of range")
            self.heartbeat = hb_ms / 1000
            self._challenge = challenge
            mac = auth_mac(self._token, _CLIENT_LABEL, challenge, self._nonce, self.client_id)
            self._send_control(FrameType.AUTH, payload=mac)
            self.state = State.HANDSHAKEN
        elif self.state is State.HANDSHAKEN and t is FrameType.AUTH_ERR:
            reason = "authentication failed: the relay rejected the token"
            self._events.append(AuthFailed(reason))
            self._finish(reason, ErrorCode.NORMAL, by_peer=True)
        elif self.state is State.HANDSHAKEN and t is FrameType.AUTH_OK:
            expect = auth_mac(
                self._token, _RELAY_LABEL, self._challenge, self._nonce, self.client_id
            )
            if not hmac.compare_digest(expect, f.payload):
                raise RemoteProtocolError("the relay could not prove it knows the token")
            self.state = State.AUTHENTICATED
            self._events.append(Authenticated("", self.client_id))
            self._send_control(FrameType.BIND, payload=_U16.pack(self._requested_port))
        elif self.state is State.AUTHENTICATED and t is FrameType.BIND_OK:
            self.port, self.lease = _BIND_OK.unpack(f.payload)
            if self.port == 0:
                raise RemoteProtocolError("the relay bound port 0")
            self._enter_bound()
            self._events.append(Bound(self.port, self.lease))
        elif self.state is State.AUTHENTICATED and t is FrameType.BIND_ERR:
            reason = f"the relay refused the bind: {text(f.payload)}"
            self._events.append(BindFailed(reason))
            self._finish(reason, ErrorCode.NORMAL, by_peer=True)
        else:
            raise self._illegal(f)

    def _set_peer_limits(self, window: int, max_frame: int) -> None:
        if not 1024 <= window <= MAX_WINDOW:
            raise RemoteProtocolError(f"peer window {window} out of range")
        if not PRE_AUTH_MAX_FRAME <= max_frame <= ABSOLUTE_MAX_FRAME:
            raise RemoteProtocolError(f"peer max frame {max_frame} out of range")
        self.peer_window = window
        self.peer_max_frame = max_frame

    def _on_ping(self, f: Frame, now: float) -> None:
        if f.flags & Flag.ACK:
            sent = self._ping_sent.pop(f.payload, None)
            if sent is not None:
                self._events.append(Pong(now - sent))
        else:
            self._send_control(FrameType.PING, Flag.ACK, 0, f.payload)

    def _on_open(self, f: Frame) -> None:
        sid = f.stream_id
        if self.role == "relay":
            if not f.flags & Flag.ACK:
                raise RemoteProtocolError("the client may not open streams")
            st = self._streams.get(sid)
            if st is None:
                self._ignore(f"OPEN|ACK for unknown stream {sid}")
            elif not st.accepted:
                st.accepted = True
                self._events.append(StreamAccepted(sid))
            return
        if f.flags & Flag.ACK:
            raise RemoteProtocolError("the relay sent OPEN|ACK")
        if sid <= self._highest_sid:
            raise RemoteProtocolError(
                f"stream id {sid} reused (highest so far {self._highest_sid})"
            )
        self._highest_sid = sid
        self.state = State.FORWARDING
        if len(self._streams) >= self.config.max_streams:
            self._send_control(FrameType.RST, 0, sid, _U32.pack(ErrorCode.REFUSED))
            self._ignore(f"stream {sid} refused: too many streams")
            return
        self._streams[sid] = _Stream(sid, self.peer_window, self.config.window)
        self._events.append(StreamOpened(sid, text(f.payload)))

    def _on_data(self, f: Frame, now: float) -> None:
        st = self._streams.get(f.stream_id)
        if st is None:
            self._ignore(f"DATA for unknown stream {f.stream_id}")
            return
        n = len(f.payload)
        if st.fin_received:
            self._stream_violation(st, ErrorCode.PROTOCOL, "DATA after FIN")
            return
        if n > st.recv_credit:
            self._stream_violation(st, ErrorCode.FLOW_CONTROL, "DATA beyond the window")
            return
        st.recv_credit -= n
        if n:
            st.buffered += n
            self.total_buffered += n
            self._events.append(StreamData(st.sid, f.payload))
        if f.flags & Flag.FIN:
            st.fin_received = True
            self._events.append(StreamEnded(st.sid))
            self._after_fin(st, now)

    def _on_window(self, f: Frame) -> None:
        st = self._streams.get(f.stream_id)
        if st is None:
            self._ignore(f"WINDOW for unknown stream {f.stream_id}")
            return
        inc = _U32.unpack(f.payload)[0]
        if inc == 0 or st.send_credit + inc > MAX_WINDOW:
            self._stream_violation(st, ErrorCode.FLOW_CONTROL, "bad window increment")
            return
        st.send_credit += inc
        if st.pending_len or (st.fin_queued and not st.fin_sent):
            self._mark_ready(st)

    def _on_rst(self, f: Frame) -> None:
        st = self._streams.get(f.stream_id)
        if st is None:
            self._ignore(f"RST for unknown stream {f.stream_id}")
            return
        raw = _U32.unpack(f.payload)[0]
        try:
            code = ErrorCode(raw)
        except ValueError:
            code = ErrorCode.INTERNAL
        self._drop(st)
        self._events.append(StreamReset(st.sid, code, by_peer=True))

    def _stream_violation(self, st: _Stream, code: ErrorCode, why: str) -> None:
        """A stream-level error resets that stream only, never the session."""
        self._ignore(f"stream {st.sid} reset: {why}")
        self.reset_stream(st.sid, code)
        self._events.append(StreamReset(st.sid, code, by_peer=False))

    def _ignore(self, reason: str) -> None:
        self.ignored += 1
        self._events.append(Ignored(reason))
