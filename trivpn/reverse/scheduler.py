"""Output scheduling and the session-wide receive budget of a reverse-tunnel session (pure).

Theory of operation
-------------------
Everything a session sends leaves through one `Scheduler`, in two classes:

* *control* frames (handshake, PING and pong, WINDOW, OPEN, RST, GOAWAY) are queued
  already encoded and always leave first, in the order they were made;
* *DATA* is pulled from the streams at send time, round-robin over the streams that are
  `ready` (bytes queued and credit to send them, or a FIN to send), at most
  `config.chunk` bytes (and never more than the peer's max frame) per frame and at most
  `config.burst` payload bytes per `data_to_send()` call.

Control output is what a peer can make us queue by sending (a pong per PING, a WINDOW
per DATA): `control_bytes` counts it until it is taken, and `over_control_limit` tells the
session to stop decoding (and the service to stop reading) while it is at
`config.control_buffer`, so a peer that floods PINGs and never reads holds at most that.

So a heartbeat or a window update waits behind at most one burst of bulk data, and a
stream with a lot queued cannot starve the others: after each frame it goes to the back
of the ring. The scheduler knows stream ids only; the frames themselves come from a
`DataSource` (the stream table), which also says whether the stream is still ready.

`SessionBudget` is the receive side's session-wide cap: bytes that arrived on any stream
but that the application has not consumed yet. While they reach `config.session_buffer`,
returning credit (WINDOW) is *deferred*, per stream, and resumed once consumption brings
the total back below the cap. Memory is therefore bounded by the cap plus one window per
stalled stream. Every session-wide bound on what a peer can make us hold belongs here
(or, for what we queue to send, in the `Scheduler`).
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from trivpn.reverse.config import SessionConfig
from trivpn.reverse.frames import PRE_AUTH_MAX_FRAME, FrameType, encode


class DataSource(Protocol):
    def pull(self, sid: int, limit: int, out: list[bytes], now: float) -> tuple[int, bool]:
        """Append at most one DATA frame (header, payload) of at most `limit` payload bytes
        for stream `sid` to `out`; return (payload bytes, whether the stream is still ready)."""
        ...


class Scheduler:
    """Control ahead of data, DATA round-robin within a burst; see the module docstring."""

    __slots__ = ("config", "max_frame", "control_bytes", "_control", "_ready", "_queued")

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.max_frame = PRE_AUTH_MAX_FRAME  # the peer's limit, known after the handshake
        self._control: list[bytes] = []
        self.control_bytes = 0  # encoded control frames queued, not yet taken
        self._ready: deque[int] = deque()
        self._queued: set[int] = set()

    def control(self, ftype: FrameType, flags: int = 0, sid: int = 0, payload: bytes = b"") -> None:
        """Queue one control frame; it leaves before any DATA."""
        frame = encode(ftype, flags, sid, payload)
        self._control.append(frame)
        self.control_bytes += len(frame)

    @property
    def over_control_limit(self) -> bool:
        """Stop taking input: the peer is not reading what its input made us queue."""
        return self.control_bytes >= self.config.control_buffer

    def ready(self, sid: int) -> None:
        """Stream `sid` has something to send (the caller checked its credit)."""
        if sid not in self._queued:
            self._queued.add(sid)
            self._ready.append(sid)

    @property
    def wants_to_send(self) -> bool:
        return bool(self._control or self._ready)

    def take_control(self) -> list[bytes]:
        out, self._control = self._control, []
        self.control_bytes = 0
        return out

    def clear_data(self) -> None:
        """The session closed: no more DATA will be sent."""
        self._ready.clear()
        self._queued.clear()

    def data_to_send(self, source: DataSource, now: float) -> list[bytes]:
        """Control frames, then up to `burst` payload bytes of DATA round-robin (a batch)."""
        out = self.take_control()
        budget = self.config.burst
        chunk = min(self.config.chunk, self.max_frame)
        ready = self._ready
        queued = self._queued
        while budget > 0 and ready:
            sid = ready.popleft()
            queued.discard(sid)
            sent, again = source.pull(sid, min(chunk, budget), out, now)
            budget -= sent
            if again and sid not in queued:
                queued.add(sid)
                ready.append(sid)
        return out


class SessionBudget:
    """Received-but-unconsumed bytes of all streams against `config.session_buffer`."""

    __slots__ = ("config", "buffered", "deferred")

    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.buffered = 0
        self.deferred: set[int] = set()  # streams whose credit return waits for room

    @property
    def has_room(self) -> bool:
        return self.buffered < self.config.session_buffer

    def received(self, n: int) -> None:
        self.buffered += n

    def released(self, n: int) -> None:
        """Consumed by the application, or no longer counted (the stream was forgotten)."""
        self.buffered -= n

    def defer(self, sid: int) -> None:
        self.deferred.add(sid)

    def forget(self, sid: int) -> None:
        self.deferred.discard(sid)

    def resume(self) -> list[int]:
        """Streams whose deferred credit may go out now (none while still at the cap)."""
        if not self.deferred or not self.has_room:
            return []
        sids = list(self.deferred)
        self.deferred.clear()
        return sids
