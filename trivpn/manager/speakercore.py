"""Sans-IO core of one side of a manager ⇄ tunnel stream: handshake, RPC, shutdown order.

Theory of operation
-------------------
:class:`SpeakerCore` holds every decision of :class:`trivpn.manager.speaker.Speaker`; the
trio service only moves bytes, owns the waiters and the deadline, and calls in. Nothing
here awaits or reads a clock (``now`` is passed in).

**Handshake.** ``header`` is our line; the service writes it while it reads the peer's.
:meth:`receive_header_data` takes the peer's bytes (the service reads them one at a time,
so the first frame stays in the stream; bytes past the newline would be kept for the frame
decoder) and returns True once it wants no more. :meth:`start_handshake` arms the deadline
(``get_timer()``); :meth:`handle_timer` past it records a timeout; I/O failures come in
through :meth:`read_failed` / :meth:`write_failed`. :meth:`finish_handshake` then returns
the negotiated version or raises :class:`HandshakeError`, in this order: the first failure
recorded, then the timeout, then a bad header line or no common version.

**Open stream.** :meth:`receive_data` runs each chunk through :class:`FrameDecoder`,
:func:`decode_message` and :class:`RPCCore`. :meth:`events` hands back, in order: a
:class:`~trivpn.manager.rpc.Response` per answered request (for its waiter), an
:class:`AutoReply` (the empty reply the core wrote itself to a request of a type it does not
know), and the requests and one-way messages for the role code as :class:`Received`
batches of at most :data:`MAX_BATCH` items (the service's queue holds a bounded number of
batches, so a bounded batch bounds what a flood of tiny frames can make us hold). Unknown responses and unknown one-way messages are dropped and logged
here. A corrupt frame, a bad length, end of stream (``b""``) or a read failure ends the read
side: ``reading`` turns False and ``closed_reason`` says why; frames that arrived before the
bad one are still delivered.

**Sending.** :meth:`encode_request` (numbers it and starts waiting), :meth:`encode_reply`
and :meth:`encode` frame outgoing messages; once ``closed_reason`` is set they raise
:class:`RPCClosed`. The tunnel's Stop reply is the last frame (RPCCore enforces it): when
:meth:`last_frame_written` says it has left with nothing queued behind it, the service
shuts its write side and calls :meth:`write_shut`.

**Requests.** A response to a pending request is kept until the waiter collects it with
:meth:`take_response`, which raises :class:`RPCClosed` (:meth:`hung_up_error`) when the
stream closed first; :meth:`forget` (always, also when the caller is cancelled) drops the
request and anything kept for it, so a late response counts as unknown.

**Shutdown.** :meth:`close` is idempotent (the first reason wins): every pending request is
forgotten and its id returned, for the service to wake its waiter.
"""

from __future__ import annotations

import logging
from typing import Any

from trivpn.errors import LocalProtocolError, RemoteProtocolError, TrivpnError
from trivpn.manager.framing import (
    FrameDecoder,
    HeaderReader,
    Version,
    format_header,
    negotiate,
    parse_header,
)
from trivpn.manager.rpc import (
    Notice,
    Request,
    Response,
    RPCCore,
    UnknownResponse,
    decode_message,
    incoming_class,
    outgoing_class,
)
from trivpn.records import dataclass

__all__ = [
    "CURRENT_VERSIONS",
    "HANDSHAKE_TIMEOUT",
    "MAX_BATCH",
    "AutoReply",
    "HandshakeError",
    "RPCClosed",
    "Received",
    "SpeakerCore",
    "SpeakerEvent",
]

log = logging.getLogger("trivpn.manager")

#: What this implementation speaks: major 1, minors up to 0.
CURRENT_VERSIONS: tuple[Version, ...] = (Version(1, 0),)
HANDSHAKE_TIMEOUT = 5.0
#: Items per `Received` batch. One 64 KiB read of 10-byte frames is 6,500 messages: with
#: whole chunks as batches, the service's queue of 64 batches let 4 MiB of a peer's flood
#: (requests it never read the answers to) occupy about 300 MB.
MAX_BATCH = 64


class RPCClosed(TrivpnError):
    """The stream ended (or was never opened) before the response arrived."""


class HandshakeError(RemoteProtocolError):
    """The header exchange failed: bad header, no common version, timeout or hang-up."""


@dataclass(slots=True)
class Received:
    """Requests and one-way messages from one chunk, for the role code (in order)."""

    batch: list[Request | Notice]


@dataclass(slots=True)
class AutoReply:
    """An empty reply to request `msg_id` of an unknown type: send it as soon as possible."""

    msg_id: int
    frame: bytes


SpeakerEvent = Response | AutoReply | Received


class SpeakerCore:
    """Handshake, framing, RPC bookkeeping and shutdown order for one side of one stream."""

    def __init__(
        self,
        role: str,
        *,
        versions: tuple[Version, ...] = CURRENT_VERSIONS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.rpc = RPCCore(role)
        self.role = role
        self.peer_role = "tunnel" if role == "manager" else "manager"
        self.versions = versions
        self.handshake_timeout = handshake_timeout
        self.header = format_header(role, versions)  # our own mistakes fail here, early
        self.version: Version | None = None
        self.closed_reason: str | None = None
        #: why the peer's stream is broken (bad length, corrupt message, hang-up inside a
        #: frame), as opposed to an ordinary end; the process exits 1 with it
        self.protocol_error: str | None = None
        self.dropped_responses = 0
        self._in_cls = incoming_class(role)
        self._out_cls = outgoing_class(role)
        self._header_reader = HeaderReader()
        self._decoder = FrameDecoder()
        self._deadline: float | None = None
        self._failure: HandshakeError | None = None
        self._timed_out = False
        self._early = b""
        self._reading = True
        self._events: list[SpeakerEvent] = []
        self._answers: dict[int, Any] = {}

    # ---------------------------------------------------------------- state

    @property
    def pending(self) -> set[int]:
        """Ids of our requests still waiting for a response."""
        return self.rpc.pending

    @property
    def finished(self) -> bool:
        """True once the tunnel's Stop reply was encoded: nothing may follow it."""
        return self.rpc.finished

    @property
    def reading(self) -> bool:
        """False once the read side has ended (hang-up, bad frame, end of stream)."""
        return self._reading and self.closed_reason is None

    @property
    def handshake_failed(self) -> bool:
        return self._failure is not None

    def new_message(self, **fields: Any) -> Any:
        """An outgoing envelope of this side's type."""
        return self._out_cls(**fields)

    # ---------------------------------------------------------------- handshake

    def start_handshake(self, now: float) -> None:
        """Arm the header deadline."""
        self._deadline = now + self.handshake_timeout

    def get_timer(self) -> float | None:
        """When `handle_timer` must run next (only the header deadline has one)."""
        if self.version is None and self.closed_reason is None:
            return self._deadline
        return None

    def handle_timer(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline and self.version is None:
            self._timed_out = True

    def receive_header_data(self, data: bytes | bytearray) -> bool:
        """Feed the peer's header bytes; True once no more are wanted (line done, or failed)."""
        if self._failure is not None or self._header_reader.line is not None:
            return True
        if not data:
            self._fail(HandshakeError("the peer hung up during the header exchange"))
            return True
        for i, byte in enumerate(data):
            try:
                done = self._header_reader.feed_byte(byte)
            except RemoteProtocolError as exc:
                self._fail(exc)
                return True
            if done:
                self._early = bytes(data[i + 1 :])
                return True
        return False

    def finish_handshake(self) -> Version:
        """The negotiated version, or HandshakeError (see the module docstring for order)."""
        if self._failure is not None:
            raise self._failure
        line = self._header_reader.line
        if self._timed_out or line is None:
            raise HandshakeError(
                f"no header from the {self.peer_role} within {self.handshake_timeout:g} s"
            )
        try:
            header = parse_header(line, self.peer_role)
            version = negotiate(self.versions, header.versions)
        except RemoteProtocolError as exc:
            raise HandshakeError(f"handshake failed: {exc}") from None
        log.debug("%s: protocol version %s", self.role, version)
        self.version = version
        if self._early:
            early, self._early = self._early, b""
            self.receive_data(early)
        return version

    def _fail(self, exc: RemoteProtocolError) -> None:
        if self._failure is None:
            self._failure = (
                exc if isinstance(exc, HandshakeError) else HandshakeError(f"handshake failed: {exc}")
            )

    # ---------------------------------------------------------------- reading

    def receive_data(self, data: bytes | bytearray) -> None:
        """One chunk from the stream (``b""``: end of stream); then drain `events`."""
        if not self.reading:
            return
        if not data:
            if self._decoder.buffered:
                log.error("%s: the %s hung up inside a frame", self.role, self.peer_role)
                self.protocol_error = (
                    f"the {self.peer_role} hung up inside a frame "
                    f"({self._decoder.buffered} bytes of it received)"
                )
                self._end("end of stream inside a frame")
            else:
                self._end("end of stream")
            return
        batch: list[Request | Notice] = []
        reason: str | None = None
        try:
            for payload in self._decoder.feed(data):
                self._dispatch(decode_message(payload, self._in_cls), batch)
        except RemoteProtocolError as exc:
            reason = str(exc)
        for start in range(0, len(batch), MAX_BATCH):
            self._events.append(Received(batch[start : start + MAX_BATCH]))
        if self._decoder.error is not None:
            reason = self._decoder.error
        if reason is not None:
            log.critical("%s: hanging up: %s", self.role, reason)
            self.protocol_error = reason
            self._end(reason)

    def read_failed(self, detail: str, *, closed: bool = False) -> None:
        """Reading failed (`closed`: our own stream object was closed under us)."""
        if self.version is None:
            self._fail(HandshakeError(f"could not read the peer's header: {detail}"))
        else:
            self._end("stream closed" if closed else f"read failed: {detail}")

    def events(self) -> list[SpeakerEvent]:
        """What the last inputs produced, in order (and forget it)."""
        out, self._events = self._events, []
        return out

    def _end(self, reason: str) -> None:
        self._reading = False
        self.closed_reason = reason

    def _dispatch(self, msg: Any, batch: list[Request | Notice]) -> None:
        ev = self.rpc.receive(msg)
        if isinstance(ev, Response):
            self._answers[ev.response_to] = msg
            self._events.append(ev)
        elif isinstance(ev, UnknownResponse):
            self.dropped_responses += 1
            log.warning(
                "%s: dropped a response to unknown request %d (%s)",
                self.role, ev.response_to, ev.kind or "empty",
            )
        elif isinstance(ev, Request) and ev.kind is None:
            log.warning("%s: answering unknown request %d with an empty reply", self.role, ev.msg_id)
            try:
                frame = self.rpc.encode(self.rpc.make_reply(ev.msg_id, self._out_cls()))
            except LocalProtocolError:
                log.warning("%s: could not queue the empty reply to %d", self.role, ev.msg_id)
            else:
                self._events.append(AutoReply(ev.msg_id, frame))
        elif isinstance(ev, Notice) and ev.kind is None:
            log.warning("%s: ignored a one-way message of an unknown type", self.role)
        else:
            batch.append(ev)

    # ---------------------------------------------------------------- sending

    def encode(self, msg: Any) -> bytes:
        """Frame one outgoing message (RPCClosed once the stream is closed or finished)."""
        if self.closed_reason is not None:
            raise self.closed_error()
        try:
            return self.rpc.encode(msg)
        except LocalProtocolError as exc:
            if self.rpc.finished:
                raise RPCClosed(f"the protocol stream is closed ({exc})") from None
            raise

    def encode_request(self, msg: Any) -> tuple[int, bytes]:
        """Number `msg` as our next request, start waiting for it, and frame it."""
        msg_id = self.rpc.new_request(msg)
        try:
            return msg_id, self.encode(msg)
        except BaseException:
            self.rpc.forget(msg_id)
            raise

    def encode_reply(self, request_msg_id: int, msg: Any) -> bytes:
        return self.encode(self.rpc.make_reply(request_msg_id, msg))

    def take_response(self, msg_id: int) -> Any:
        """The response to our request `msg_id`; RPCClosed if the stream ended first."""
        try:
            return self._answers.pop(msg_id)
        except KeyError:
            raise self.hung_up_error() from None

    def forget(self, msg_id: int) -> None:
        """Done with `msg_id` (answered, or the caller gave up: a late response is dropped)."""
        self.rpc.forget(msg_id)
        self._answers.pop(msg_id, None)

    def write_failed(self, detail: str) -> None:
        if self.version is None:
            self._fail(HandshakeError(f"could not send our header: {detail}"))
        elif self.closed_reason is None:
            self.closed_reason = f"write failed: {detail}"

    def last_frame_written(self, backlog: int) -> bool:
        """After a write with `backlog` frames still queued: was that the Stop reply?

        True means: shut our side of the stream for writing, then call `write_shut`.
        """
        return self.rpc.finished and backlog == 0

    def write_shut(self) -> None:
        if self.closed_reason is None:
            self.closed_reason = "stop answered"

    # ---------------------------------------------------------------- shutdown

    def close(self, reason: str) -> list[int]:
        """The stream is done: the ids of every request that must now fail."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self._reading = False
        return self.rpc.close()

    def closed_error(self) -> RPCClosed:
        """For a send attempted after the stream closed."""
        return RPCClosed(f"the protocol stream is closed ({self.closed_reason})")

    def hung_up_error(self) -> RPCClosed:
        """For a request still waiting when the stream closed."""
        return RPCClosed(f"the {self.peer_role} hung up ({self.closed_reason})")
