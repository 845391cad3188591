"""The RPC speaker: a trio service running the header exchange, framing and RPC matching.

Theory of operation
-------------------
`Speaker.run` first exchanges headers: our header is written while the peer's is read one
byte per `receive_some(1)` (so the first frame stays in the stream), both under one 5 s
deadline. Then two tasks run in the speaker's own nursery:

* the **reader** decodes frames (:class:`FrameDecoder`, :func:`decode_message`) and
  classifies each message with :class:`RPCCore`: responses wake the caller waiting in
  `request()`; requests and one-way messages go, as one list per read, to the `requests`
  channel for the role code; an unknown `response_to` is dropped and logged; a request of a
  type we do not know is answered with an empty reply here. A corrupt frame, a bad length or
  end of stream ends the reader: the stream is closed (the peer sees us hang up), every
  pending `request()` raises :class:`RPCClosed`, and `requests` ends.
* the **writer** takes lists of frames from a bounded channel and writes each list with one
  `send_all`, so frames never interleave. After the tunnel's Stop reply it closes our side
  for writing and stops: that reply is always the last frame.

Either task ending ends the speaker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

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

__all__ = ["CURRENT_VERSIONS", "HANDSHAKE_TIMEOUT", "HandshakeError", "RPCClosed", "Speaker"]

log = logging.getLogger("trivpn.manager")

#: What this implementation speaks: major 1, minors up to 0.
CURRENT_VERSIONS: tuple[Version, ...] = (Version(1, 0),)
HANDSHAKE_TIMEOUT = 5.0
READ_SIZE = 65536
QUEUE_SIZE = 64


class RPCClosed(TrivpnError):
    """The stream ended (or was never opened) before the response arrived."""


class HandshakeError(RemoteProtocolError):
    """The header exchange failed: bad header, no common version, timeout or hang-up."""


@dataclass(slots=True)
class _Slot:
    event: trio.Event = field(default_factory=trio.Event)
    message: Any = None
    error: BaseException | None = None


class Speaker:
    """One side (`role`) of one manager ⇄ tunnel stream."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        role: str,
        *,
        versions: tuple[Version, ...] = CURRENT_VERSIONS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.stream = stream
        self.role = role
        self.peer_role = "tunnel" if role == "manager" else "manager"
        self.versions = versions
        self.handshake_timeout = handshake_timeout
        self.core = RPCCore(role)
        self.version: Version | None = None
        self.closed_reason: str | None = None
        self.dropped_responses = 0
        self._header = format_header(role, versions)  # our own mistakes fail here, early
        self._in_cls = incoming_class(role)
        self._out_cls = outgoing_class(role)
        self._slots: dict[int, _Slot] = {}
        self._out_s, self._out_r = trio.open_memory_channel[list[bytes]](queue_size)
        self._req_s, self.requests = trio.open_memory_channel[list[Request | Notice]](queue_size)
        self._ready = trio.Event()
        self._done = trio.Event()

    # ---------------------------------------------------------------- public API

    def new_message(self, **fields: Any) -> Any:
        """An outgoing envelope of this side's type, e.g. `new_message(stop=StopRequest())`."""
        return self._out_cls(**fields)

    async def request(self, msg: Any) -> Any:
        """Send `msg` as a request and return the peer's response message.

        Cancelling the caller forgets the request (a late response is then dropped); the
        stream ending first raises RPCClosed.
        """
        await self._ready.wait()
        msg_id = self.core.new_request(msg)
        slot = _Slot()
        self._slots[msg_id] = slot
        try:
            await self._queue(msg)
            await slot.event.wait()
        finally:
            self._slots.pop(msg_id, None)
            self.core.forget(msg_id)
        if slot.error is not None:
            raise slot.error
        return slot.message

    async def send(self, msg: Any) -> None:
        """Send a one-way message (RPCClosed once the stream is finished)."""
        await self._ready.wait()
        await self._queue(msg)

    async def reply(self, request: Request, msg: Any) -> None:
        """Answer a request from the peer."""
        await self._queue(self.core.make_reply(request.msg_id, msg))

    def send_nowait(self, msg: Any) -> bool:
        """Queue a one-way message without waiting; False if it was dropped (full or closed)."""
        if not self._ready.is_set() or self.closed_reason is not None or self.core.finished:
            return False
        try:
            frame = self.core.encode(msg)
            self._out_s.send_nowait([frame])
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError, LocalProtocolError):
            return False
        return True

    @property
    def finished(self) -> bool:
        """True once the speaker has stopped (hang-up, end of stream, or Stop answered)."""
        return self._done.is_set()

    async def wait_closed(self) -> None:
        await self._done.wait()

    # ---------------------------------------------------------------- service

    async def handshake(self) -> Version:
        """Exchange headers (concurrently, bounded in time); the negotiated version."""
        reader = HeaderReader()
        failures: list[BaseException] = []

        async def write_header() -> None:
            try:
                await self.stream.send_all(self._header)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                failures.append(HandshakeError(f"could not send our header: {exc}"))

        async def read_header(scope: trio.CancelScope) -> None:
            try:
                while True:
                    byte = await self.stream.receive_some(1)
                    if not byte:
                        raise HandshakeError("the peer hung up during the header exchange")
                    if reader.feed_byte(byte[0]):
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                failures.append(HandshakeError(f"could not read the peer's header: {exc}"))
            except RemoteProtocolError as exc:
                failures.append(exc)
            scope.cancel()  # no point finishing our write

        with trio.move_on_after(self.handshake_timeout) as deadline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(write_header)
                nursery.start_soon(read_header, nursery.cancel_scope)
        if failures:
            exc = failures[0]
            raise exc if isinstance(exc, HandshakeError) else HandshakeError(f"handshake failed: {exc}")
        if deadline.cancelled_caught or reader.line is None:
            raise HandshakeError(f"no header from the {self.peer_role} within {self.handshake_timeout:g} s")
        try:
            header = parse_header(reader.line, self.peer_role)
            version = negotiate(self.versions, header.versions)
        except RemoteProtocolError as exc:
            raise HandshakeError(f"handshake failed: {exc}") from None
        log.debug("%s: protocol version %s", self.role, version)
        return version

    async def run(self, *, task_status: trio.TaskStatus[Version] = trio.TASK_STATUS_IGNORED) -> None:
        """Handshake, then read and write until the stream ends. Hands back the version."""
        try:
            self.version = await self.handshake()
        except BaseException as exc:
            self._shutdown(f"{exc}" if isinstance(exc, TrivpnError) else "handshake cancelled")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            raise
        self._ready.set()
        task_status.started(self.version)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, nursery.cancel_scope)
                nursery.start_soon(self._writer, nursery.cancel_scope)
        finally:
            self._shutdown(self.closed_reason or "speaker stopped")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    # ---------------------------------------------------------------- internals

    async def _queue(self, msg: Any) -> None:
        if self.closed_reason is not None:
            raise RPCClosed(f"the protocol stream is closed ({self.closed_reason})")
        try:
            frame = self.core.encode(msg)
        except LocalProtocolError as exc:
            if self.core.finished:
                raise RPCClosed(f"the protocol stream is closed ({exc})") from None
            raise
        try:
            await self._out_s.send([frame])
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise RPCClosed(f"the protocol stream is closed ({self.closed_reason})") from None

    def _shutdown(self, reason: str) -> None:
        """Fail every pending request and end `requests`; idempotent."""
        if self.closed_reason is None:
            self.closed_reason = reason
        for msg_id in self.core.close():
            slot = self._slots.get(msg_id)
            if slot is not None and not slot.event.is_set():
                slot.error = RPCClosed(f"the {self.peer_role} hung up ({self.closed_reason})")
                slot.event.set()
        self._req_s.close()
        self._out_s.close()
        self._ready.set()
        self._done.set()

    async def _reader(self, scope: trio.CancelScope) -> None:
        decoder = FrameDecoder()
        try:
            while True:
                try:
                    data = await self.stream.receive_some(READ_SIZE)
                except (trio.BrokenResourceError, OSError) as exc:
                    self.closed_reason = f"read failed: {exc}"
                    return
                except trio.ClosedResourceError:
                    self.closed_reason = "stream closed"
                    return
                if not data:
                    self.closed_reason = (
                        "end of stream inside a frame" if decoder.buffered else "end of stream"
                    )
                    if decoder.buffered:
                        log.error("%s: the %s hung up inside a frame", self.role, self.peer_role)
                    return
                batch: list[Request | Notice] = []
                try:
                    for payload in decoder.feed(data):
                        self._dispatch(decode_message(payload, self._in_cls), batch)
                except RemoteProtocolError as exc:
                    self.closed_reason = str(exc)
                if batch:
                    try:
                        await self._req_s.send(batch)
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        pass  # nobody reads requests any more; keep serving responses
                if decoder.error is not None:
                    self.closed_reason = decoder.error
                if self.closed_reason is not None:
                    log.critical("%s: hanging up: %s", self.role, self.closed_reason)
                    return
        finally:
            self._shutdown(self.closed_reason or "reader stopped")
            scope.cancel()

    def _dispatch(self, msg: Any, batch: list[Request | Notice]) -> None:
        ev = self.core.receive(msg)
        if isinstance(ev, Response):
            slot = self._slots.get(ev.response_to)
            if slot is not None:
                slot.message = msg
                slot.event.set()
        elif isinstance(ev, UnknownResponse):
            self.dropped_responses += 1
            log.warning(
                "%s: dropped a response to unknown request %d (%s)",
                self.role, ev.response_to, ev.kind or "empty",
            )
        elif isinstance(ev, Request) and ev.kind is None:
            log.warning("%s: answering unknown request %d with an empty reply", self.role, ev.msg_id)
            try:
                self._out_s.send_nowait([self.core.encode(self.core.make_reply(ev.msg_id, self._out_cls()))])
            except (trio.WouldBlock, trio.ClosedResourceError, LocalProtocolError):
                log.warning("%s: could not queue the empty reply to %d", self.role, ev.msg_id)
        elif isinstance(ev, Notice) and ev.kind is None:
            log.warning("%s: ignored a one-way message of an unknown type", self.role)
        else:
            batch.append(ev)

    async def _writer(self, scope: trio.CancelScope) -> None:
        try:
            async with self._out_r:
                async for frames in self._out_r:
                    data = frames[0] if len(frames) == 1 else b"".join(frames)
                    try:
                        await self.stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                        self.closed_reason = self.closed_reason or f"write failed: {exc}"
                        return
                    if self.core.finished and self._out_r.statistics().current_buffer_used == 0:
                        # Stop was answered: that frame is the last we ever send.
                        send_eof = getattr(self.stream, "send_eof", None)
                        if send_eof is not None:
                            try:
                                await send_eof()
                            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                                pass
                        self.closed_reason = self.closed_reason or "stop answered"
                        return
        finally:
            scope.cancel()
