"""The RPC speaker: the trio service that moves one stream's bytes for a `SpeakerCore`.

Theory of operation
-------------------
Every protocol decision lives in :class:`~trivpn.manager.speakercore.SpeakerCore`; this
module only reads, writes, waits and keeps the deadline. `Speaker.run` first exchanges
headers (:func:`exchange_headers`): our header is written while the peer's is read one byte
per `receive_some(1)` (so the first frame stays in the stream), both under the core's
deadline. Then two tasks run in the speaker's own nursery:

* the **reader** (:func:`read_frames`) feeds chunks to the core, and the speaker acts on
  its events: a response wakes the caller waiting in `request()`; an empty auto-reply is
  queued; a batch of requests and one-way messages goes to the `requests` channel. Once the
  core stops reading (corrupt frame, bad length, end of stream) the stream is closed (the
  peer sees us hang up), every pending `request()` raises :class:`RPCClosed`, and
  `requests` ends.
* the **writer** (:func:`write_frames`) takes lists of frames from a bounded channel and
  writes each list with one `send_all`, so frames never interleave. After the tunnel's Stop
  reply it closes our side for writing and stops: that reply is always the last frame.

Either task ending ends the speaker.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import trio

from trivpn.errors import LocalProtocolError, TrivpnError
from trivpn.manager.framing import Version
from trivpn.manager.rpc import Notice, Request, Response
from trivpn.manager.speakercore import (
    CURRENT_VERSIONS,
    HANDSHAKE_TIMEOUT,
    AutoReply,
    HandshakeError,
    RPCClosed,
    SpeakerCore,
    log,
)

__all__ = ["CURRENT_VERSIONS", "HANDSHAKE_TIMEOUT", "HandshakeError", "RPCClosed", "Speaker"]

READ_SIZE = 65536
QUEUE_SIZE = 64
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _why(exc: BaseException) -> str:
    """An I/O failure in words: trio's BrokenResourceError for a closed pipe has no text."""
    if str(exc):
        return str(exc)
    return "the peer hung up" if isinstance(exc, trio.BrokenResourceError) else type(exc).__name__


async def exchange_headers(stream: trio.abc.Stream, core: SpeakerCore, now: float) -> Version:
    """Write our header while reading the peer's, under the core's deadline."""
    core.start_handshake(now)

    async def write_header(scope: trio.CancelScope) -> None:
        try:
            await stream.send_all(core.header)
        except _IO_ERRORS as exc:
            core.write_failed(_why(exc))
            scope.cancel()  # no point waiting for the peer's header until the deadline

    async def read_header(scope: trio.CancelScope) -> None:
        try:
            while not core.receive_header_data(await stream.receive_some(1)):
                pass
        except _IO_ERRORS as exc:
            core.read_failed(_why(exc))
        if core.handshake_failed:
            scope.cancel()  # no point finishing our write

    deadline = core.get_timer()
    with trio.move_on_at(deadline if deadline is not None else now) as timer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_header, nursery.cancel_scope)
            nursery.start_soon(read_header, nursery.cancel_scope)
    if timer.cancelled_caught:
        core.handle_timer(trio.current_time())
    return core.finish_handshake()


async def read_frames(
    stream: trio.abc.Stream,
    core: SpeakerCore,
    waiting: dict[int, trio.Event],
    frames_out: trio.MemorySendChannel[list[bytes]],
    requests: trio.MemorySendChannel[list[Request | Notice]],
) -> None:
    """Feed the stream to the core and act on its events, until it stops reading.

    A response wakes its waiter in `waiting`; an auto-reply is queued on `frames_out`; a
    batch goes to `requests` (waiting here is the backpressure on a slow role).
    """
    while True:
        for ev in core.events():
            if isinstance(ev, Response):
                if ev.response_to in waiting:
                    waiting[ev.response_to].set()
            elif isinstance(ev, AutoReply):
                try:
                    frames_out.send_nowait([ev.frame])
                except (trio.WouldBlock, trio.ClosedResourceError):
                    log.warning("%s: could not queue the empty reply to %d", core.role, ev.msg_id)
            else:
                try:
                    await requests.send(ev.batch)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    pass  # nobody reads requests any more; keep serving responses
        if not core.reading:
            return
        try:
            data = await stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, OSError) as exc:
            core.read_failed(_why(exc))
        except trio.ClosedResourceError as exc:
            core.read_failed(_why(exc), closed=True)
        else:
            core.receive_data(data)


async def write_frames(
    stream: trio.abc.Stream, core: SpeakerCore, frames: trio.MemoryReceiveChannel[list[bytes]]
) -> None:
    """Write each queued list at once; after the last frame (Stop reply) shut our side."""
    async with frames:
        async for batch in frames:
            try:
                await stream.send_all(batch[0] if len(batch) == 1 else b"".join(batch))
            except _IO_ERRORS as exc:
                core.write_failed(_why(exc))
                return
            if core.last_frame_written(frames.statistics().current_buffer_used):
                send_eof = getattr(stream, "send_eof", None)
                if send_eof is not None:
                    try:
                        await send_eof()
                    except _IO_ERRORS:
                        pass
                core.write_shut()
                return


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
        self.core = SpeakerCore(role, versions=versions, handshake_timeout=handshake_timeout)
        self.role, self.peer_role = role, self.core.peer_role
        self.versions, self.handshake_timeout = versions, handshake_timeout
        self.version: Version | None = None
        self._waiting: dict[int, trio.Event] = {}  # request() callers, by msg_id
        self._out_s, self._out_r = trio.open_memory_channel[list[bytes]](queue_size)
        self._req_s, self.requests = trio.open_memory_channel[list[Request | Notice]](queue_size)
        self._ready = trio.Event()
        self._done = trio.Event()
        self._failure: TrivpnError | None = None  # why the handshake failed

    @property
    def closed_reason(self) -> str | None:
        return self.core.closed_reason

    @property
    def protocol_error(self) -> str | None:
        """Why the peer's stream broke (a framing error), None for an ordinary end."""
        return self.core.protocol_error

    @property
    def dropped_responses(self) -> int:
        return self.core.dropped_responses

    @property
    def finished(self) -> bool:
        """True once the speaker has stopped (hang-up, end of stream, or Stop answered)."""
        return self._done.is_set()

    def new_message(self, **fields: Any) -> Any:
        """An outgoing envelope of this side's type, e.g. `new_message(stop=StopRequest())`."""
        return self.core.new_message(**fields)

    async def request(self, msg: Any) -> Any:
        """Send `msg` as a request and return the peer's response message.

        Cancelling the caller forgets the request (a late response is then dropped); the
        stream ending first raises RPCClosed.
        """
        await self._ready.wait()
        msg_id, frame = self.core.encode_request(msg)
        self._waiting[msg_id] = answered = trio.Event()
        try:
            await self._queue(frame)
            await answered.wait()
            return self.core.take_response(msg_id)
        finally:
            del self._waiting[msg_id]
            self.core.forget(msg_id)

    async def send(self, msg: Any) -> None:
        """Send a one-way message (RPCClosed once the stream is finished)."""
        await self._ready.wait()
        await self._queue(self.core.encode(msg))

    async def reply(self, request: Request, msg: Any) -> None:
        """Answer a request from the peer."""
        await self._queue(self.core.encode_reply(request.msg_id, msg))

    def send_nowait(self, msg: Any) -> bool:
        """Queue a one-way message without waiting; False if it was dropped (full or closed)."""
        if not self._ready.is_set():
            return False
        try:
            self._out_s.send_nowait([self.core.encode(msg)])
        except (RPCClosed, LocalProtocolError, trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def wait_closed(self) -> None:
        await self._done.wait()

    async def wait_ready(self) -> Version:
        """The negotiated version once `run` (started with start_soon) has done the handshake;
        HandshakeError like `run`'s when it failed, RPCClosed when the speaker stopped first."""
        await self._ready.wait()
        if self.version is not None:
            return self.version
        if self._failure is not None:
            raise HandshakeError(str(self._failure))
        raise self.core.closed_error()

    async def handshake(self) -> Version:
        """Exchange headers (concurrently, bounded in time); the negotiated version."""
        return await exchange_headers(self.stream, self.core, trio.current_time())

    async def run(self, *, task_status: trio.TaskStatus[Version] = trio.TASK_STATUS_IGNORED) -> None:
        """Handshake, then read and write until the stream ends. Hands back the version."""
        reason = "handshake cancelled"
        try:
            try:
                self.version = await self.handshake()
            except TrivpnError as exc:
                reason = f"{exc}"
                self._failure = exc
                raise
            reason = "speaker stopped"
            self._ready.set()
            task_status.started(self.version)
            async with trio.open_nursery() as nursery:
                reader = read_frames(self.stream, self.core, self._waiting, self._out_s, self._req_s)
                nursery.start_soon(self._pump, reader, nursery.cancel_scope, "reader stopped")
                writer = write_frames(self.stream, self.core, self._out_r)
                nursery.start_soon(self._pump, writer, nursery.cancel_scope, None)
        finally:
            self._shutdown(self.core.closed_reason or reason)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    async def _pump(self, pump: Awaitable[None], scope: trio.CancelScope, reason: str | None) -> None:
        """Either task ending ends the other; the reader's end also fails waiting requests."""
        try:
            await pump
        finally:
            if reason is not None:
                self._shutdown(self.core.closed_reason or reason)
            scope.cancel()

    async def _queue(self, frame: bytes) -> None:
        try:
            await self._out_s.send([frame])
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self.core.closed_error() from None

    def _shutdown(self, reason: str) -> None:
        """Wake every pending request (it fails) and end `requests`; idempotent."""
        self.core.close(reason)
        for answered in self._waiting.values():
            answered.set()
        self._req_s.close()
        self._out_s.close()
        self._ready.set()
        self._done.set()
