"""One end of a reverse-tunnel connection (pure, sans-IO): the facade over its pieces.

Theory of operation
-------------------
One `Session` runs each end of one tunnel connection (`role` is "relay" or "client").
Bytes from the connection go in with `receive_data(data, now)`; bytes for the connection
come out of `data_to_send(now)`; what happened comes out of `events()`; time enters only
as `now`, and `get_timer()` / `handle_timer(now)` drive heartbeats and deadlines.

The work is done by separate pieces, each testable alone, that share one `Scheduler`
(everything they send) and one event list (everything they report):

* `handshake.Handshake` — INIT → HANDSHAKEN → AUTHENTICATED → BOUND and the
  challenge-response authentication;
* `streams.Streams` — per-stream state, credit flow control, FIN/RST, linger;
* `scheduler.Scheduler` / `scheduler.SessionBudget` — control ahead of round-robin DATA
  within a burst; the session-wide cap on received-but-unconsumed bytes and on window
  growth (and, on a relay, the `BufferPool` all its sessions share);
* `heartbeat.Heartbeat` — pings, pongs, expiry after missed heartbeats;
* `events` — the typed events and `StreamClosedError`.

This facade owns what spans them: the frame decoder and its limit (256 bytes until the
session is bound, then `max_frame`), the handshake deadline, the session's end (GOAWAY
out or in, a protocol error, end of file), and the dispatch of each frame by state: any
frame not legal in the current state closes the session with GOAWAY(PROTOCOL). A client
whose HELLO gets no answer tells the two usual mistakes apart: the relay closed with
nothing sent (`RELAY_SILENT`), or what came back starts a TLS record (`RELAY_SPEAKS_TLS`,
a TLS relay's alert: no frame starts that way). States as seen from outside: the
handshake's, then FORWARDING once a stream opened, then CLOSED.
See the pieces' docstrings and docs/reverse-tunnel.md for the rules.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Mapping

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.reverse.config import MAX_STREAM_ID, MAX_WINDOW, SessionConfig
from trivpn.reverse.events import (
    Authenticated,
    AuthFailed,
    BindFailed,
    Binding,
    BindRequested,
    Bound,
    Event,
    Ignored,
    Pong,
    SessionClosed,
    StreamAccepted,
    StreamClosed,
    StreamClosedError,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamReset,
    StreamWritable,
)
from trivpn.reverse.frames import (
    MAX_TEXT,
    PRE_AUTH_MAX_FRAME,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    looks_like_tls,
    text,
)
from trivpn.reverse.handshake import RELAY_SILENT, RELAY_SPEAKS_TLS, Handshake, State, auth_mac
from trivpn.reverse.heartbeat import Heartbeat
from trivpn.reverse.scheduler import BufferPool, Scheduler, SessionBudget
from trivpn.reverse.streams import Streams

__all__ = [
    "MAX_STREAM_ID",
    "MAX_WINDOW",
    "Authenticated",
    "AuthFailed",
    "BindFailed",
    "Binding",
    "BindRequested",
    "Bound",
    "Event",
    "Ignored",
    "Pong",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "State",
    "StreamAccepted",
    "StreamClosed",
    "StreamClosedError",
    "StreamData",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "StreamWritable",
    "auth_mac",
]

_U32 = struct.Struct("!I")


def _key(key: bytes | None, role: str) -> bytes:
    """A client's takeover key: given (kept across its sessions), else a fresh one."""
    if role != "client":
        return b""
    return key if key is not None else secrets.token_bytes(32)


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
        resume_key: bytes | None = None,
        next_key: bytes | None = None,
        pool: BufferPool | None = None,
        requested_name: str = "",
        routes: int = 0,
        bindings: tuple[Binding, ...] | None = None,
    ) -> None:
        if role not in ("relay", "client"):
            raise LocalProtocolError(f"role must be relay or client, not {role!r}")
        self.role = role
        self.config = config or SessionConfig()
        self.config.check()
        self.created = now
        self.close_reason: str | None = None
        self._closed = False
        self._bound = False
        self._forwarding = False
        self._decoder = FrameDecoder(PRE_AUTH_MAX_FRAME)
        self._events: list[Event] = []
        self._scheduler = Scheduler(self.config)
        self._budget = SessionBudget(self.config, pool)
        self._streams = Streams(role, self.config, self._scheduler, self._budget, self._events)
        self._heartbeat = Heartbeat(self.config, now, self._scheduler, self._events)
        self._handshake = Handshake(
            role,
            self.config,
            self._scheduler,
            self._events,
            tokens=tokens,
            token=token,
            client_id=client_id,
            requested_port=requested_port,
            random=random if random is not None else secrets.token_bytes(32),
            resume_key=_key(resume_key, role),
            next_key=_key(next_key, role),
            requested_name=requested_name,
            routes=routes,
            bindings=bindings,
        )

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> State:
        if self._closed:
            return State.CLOSED
        if self._forwarding:
            return State.FORWARDING
        return self._handshake.state

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stream_count(self) -> int:
        return len(self._streams.table)

    @property
    def total_buffered(self) -> int:
        """Received on any stream, not yet consumed by the application."""
        return self._budget.buffered

    @property
    def ignored(self) -> int:
        return self._streams.ignored

    @property
    def name(self) -> str:
        return self._handshake.name

    @property
    def client_id(self) -> bytes:
        return self._handshake.client_id

    @property
    def port(self) -> int:
        return self._handshake.port

    @property
    def ports(self) -> tuple[int, ...]:
        """One public port per binding, once bound."""
        return self._handshake.ports

    @property
    def bindings(self) -> tuple[Binding, ...]:
        return self._handshake.bindings

    @property
    def protocol(self) -> int:
        return self._handshake.protocol

    @property
    def lease(self) -> int:
        return self._handshake.lease

    @property
    def heartbeat(self) -> float:
        return self._handshake.heartbeat

    @property
    def peer_window(self) -> int:
        return self._handshake.peer_window

    @property
    def peer_max_frame(self) -> int:
        return self._handshake.peer_max_frame

    # ------------------------------------------------------------------ inputs

    def receive_data(self, data: bytes, now: float) -> None:
        """Feed bytes from the connection. Raises RemoteProtocolError after closing the session."""
        if self._closed:
            return
        if data:
            self._heartbeat.last_rx = now
        scheduler = self._scheduler
        try:
            # one frame at a time: BIND_OK changes the size limit for the frames after it;
            # while our queued control output is at its limit the rest waits in the decoder
            # (call again with b"" once data_to_send() took it; see `reading_paused`)
            decoder = self._decoder
            decoder.push(data)
            if self._unanswered() and looks_like_tls(decoder.head(2)):
                self._finish(RELAY_SPEAKS_TLS, ErrorCode.PROTOCOL, by_peer=True)
                return
            while not scheduler.over_control_limit and (frame := decoder.next_frame()) is not None:
                self._handle(frame, now)
                if self._closed:
                    return
        except RemoteProtocolError as exc:
            self._fail(ErrorCode.PROTOCOL, str(exc))
            raise

    def receive_eof(self, now: float) -> None:
        """The connection ended without GOAWAY."""
        if not self._closed:
            reason = "the connection was closed"
            if self._unanswered() and not self._decoder.buffered:
                reason = RELAY_SILENT
            self._finish(reason, ErrorCode.INTERNAL, by_peer=True)

    def _unanswered(self) -> bool:
        """A client whose HELLO got no answer yet (no HELLO_ACK)."""
        return self.role == "client" and self._handshake.state is State.INIT

    def close(self, reason: str = "closing", code: ErrorCode = ErrorCode.NORMAL) -> None:
        """Say GOAWAY and stop; every stream is reset (reported as StreamReset)."""
        if self._closed:
            return
        reason_b = reason.encode()[:MAX_TEXT]
        self._scheduler.control(FrameType.GOAWAY, payload=_U32.pack(code) + reason_b)
        self._finish(reason, code, by_peer=False)

    # relay side ----------------------------------------------------------------------

    def accept_bind(
        self, port: int, lease: int, *, host: str = "", http_port: int = 0, https_port: int = 0
    ) -> None:
        """`host` and the ports answer a named bind (BindRequested.name)."""
        hs = self._handshake
        if self.role != "relay" or self.state is not State.AUTHENTICATED or not hs.bind_asked:
            raise LocalProtocolError(f"accept_bind in state {self.state.value}")
        hs.accept_bind(port, lease, host=host, http_port=http_port, https_port=https_port)
        self._enter_bound()

    def accept_binds(self, ports: tuple[int, ...] | list[int], lease: int) -> None:
        """Relay: one public port per requested binding, in order (protocol 1 or 2)."""
        hs = self._handshake
        if self.role != "relay" or self.state is not State.AUTHENTICATED or not hs.bind_asked:
            raise LocalProtocolError(f"accept_bind in state {self.state.value}")
        hs.accept_binds(ports, lease)
        self._enter_bound()

    def reject_bind(self, reason: str) -> None:
        if self.role != "relay" or self.state is not State.AUTHENTICATED:
            raise LocalProtocolError(f"reject_bind in state {self.state.value}")
        failed = self._handshake.reject_bind(reason)
        self._finish(failed.reason, ErrorCode.NORMAL, by_peer=failed.by_peer)

    def open_stream(self, peer: str, now: float, binding: int = 0) -> int:
        """Relay: announce a new public connection (on the `binding`-th port); its id."""
        if self.role != "relay":
            raise LocalProtocolError("only the relay opens streams")
        if self._closed or not self._bound:
            raise StreamClosedError(f"cannot open a stream in state {self.state.value}")
        if not 0 <= binding < len(self._handshake.ports):
            raise LocalProtocolError(f"no binding {binding}")
        sid = self._streams.open(peer, binding if self._handshake.protocol > 1 else None)
        self._forwarding = True
        return sid

    # client side ---------------------------------------------------------------------

    def accept_stream(self, sid: int) -> None:
        """Client: the local service accepted the connection for this stream."""
        self._streams.accept(sid)

    # both ------------------------------------------------------------------------------

    def send_data(self, sid: int, data: bytes) -> bool:
        """Queue bytes on a stream; False means the producer should wait for StreamWritable."""
        if self._closed:
            raise StreamClosedError("the session is closed")
        return self._streams.send_data(sid, data)

    def send_fin(self, sid: int, now: float) -> None:
        """Half-close our direction once the queued bytes have gone."""
        if self._closed:
            raise StreamClosedError("the session is closed")
        self._streams.send_fin(sid, now)

    def reset_stream(self, sid: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """Abort a stream both ways (local service unreachable, socket error, ...)."""
        if not self._closed:
            self._streams.reset(sid, code)

    def consumed(self, sid: int, n: int, now: float | None = None) -> None:
        """The application took `n` bytes of this stream's data: give the credit back.
        `now` dates the progress for the stalled-reader timeout (else: "recently")."""
        if not self._closed:
            self._streams.consumed(sid, n, now)

    def awaiting_writable(self, sid: int) -> bool:
        """After `send_data` returned False: still wait for StreamWritable (or a reset)."""
        return not self._closed and self._streams.awaiting_writable(sid)

    @property
    def reading_paused(self) -> bool:
        """Do not read from the peer: the control output its input made us queue is at
        `config.control_buffer`. Resume with `receive_data(b"", now)` after sending."""
        return self._scheduler.over_control_limit and not self._closed

    @property
    def wants_to_send(self) -> bool:
        """Output is waiting: control frames, or streams with data and credit."""
        return self._scheduler.wants_to_send

    def pending_bytes(self, sid: int) -> int:
        return self._streams.pending_bytes(sid)

    # ------------------------------------------------------------------ outputs

    def events(self) -> list[Event]:
        ev = self._events.copy()
        self._events.clear()  # the pieces keep appending to this very list
        return ev

    def data_to_send(self, now: float) -> list[bytes]:
        """Control frames first, then up to `burst` bytes of DATA round-robin (a batch)."""
        if self._closed:
            self._scheduler.clear_data()
            return self._scheduler.take_control()
        return self._scheduler.data_to_send(self._streams, now)

    def get_timer(self) -> float:
        if self._closed:
            return float("inf")
        if not self._bound:
            return self.created + self.config.handshake_timeout
        return min(self._heartbeat.deadline(), self._streams.next_deadline())

    def handle_timer(self, now: float) -> None:
        if self._closed:
            return
        if not self._bound:
            if now >= self.created + self.config.handshake_timeout:
                self.close(
                    f"handshake not finished within {self.config.handshake_timeout:g} s",
                    ErrorCode.TIMEOUT,
                )
            return
        expired = self._heartbeat.check(now)
        if expired is not None:
            self.close(expired, ErrorCode.TIMEOUT)
            return
        self._streams.expire(now)

    # ------------------------------------------------------------------ internals

    def _enter_bound(self) -> None:
        hs = self._handshake
        self._bound = True
        self._decoder.max_frame = self.config.max_frame
        self._scheduler.max_frame = hs.peer_max_frame
        self._streams.peer_window = hs.peer_window
        self._streams.binding_prefix = hs.protocol > 1
        self._heartbeat.start(hs.heartbeat)

    def _fail(self, code: ErrorCode, reason: str) -> None:
        if self._closed:
            return
        payload = _U32.pack(code) + reason.encode()[:MAX_TEXT]
        self._scheduler.control(FrameType.GOAWAY, payload=payload)
        self._finish(f"protocol error: {reason}", code, by_peer=False)

    def _finish(self, reason: str, code: ErrorCode, *, by_peer: bool) -> None:
        self._closed = True
        self.close_reason = reason
        self._streams.reset_all(by_peer)
        self._scheduler.clear_data()
        self._events.append(SessionClosed(reason, code, by_peer))

    def _handle(self, f: Frame, now: float) -> None:
        t = f.type
        if t is FrameType.GOAWAY:
            self._on_goaway(f)
        elif not self._bound:
            failed = self._handshake.handle(f)
            if failed is not None:
                self._finish(failed.reason, ErrorCode.NORMAL, by_peer=failed.by_peer)
            elif self._handshake.state is State.BOUND:
                self._enter_bound()
            elif self._handshake.state is State.AUTHENTICATED:
                # the peer proved the token: a protocol-2 BIND may exceed the pre-auth limit
                self._decoder.max_frame = self.config.max_frame
        elif t is FrameType.DATA:
            self._streams.on_data(f, now)
        elif t is FrameType.WINDOW:
            self._streams.on_window(f)
        elif t is FrameType.PING:
            self._heartbeat.on_ping(f, now)
        elif t is FrameType.OPEN:
            self._streams.on_open(f)
            if self.role == "client":
                self._forwarding = True
        elif t is FrameType.RST:
            self._streams.on_rst(f)
        else:
            raise RemoteProtocolError(
                f"{t.name} frame is not allowed in state {self.state.value} ({self.role} side)"
            )

    def _on_goaway(self, f: Frame) -> None:
        code = _U32.unpack_from(f.payload)[0] if len(f.payload) >= 4 else ErrorCode.PROTOCOL
        try:
            ecode = ErrorCode(code)
        except ValueError:
            ecode = ErrorCode.INTERNAL
        reason = text(f.payload[4:]) or ecode.name.lower()
        if ecode is ErrorCode.PROTOCOL and self.role == "client" and not self._bound:
            reason += " (the relay refused our handshake: is it an older trivpn?)"
        self._finish(f"the peer closed the session: {reason}", ecode, by_peer=True)
