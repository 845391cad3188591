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
but that the application has not consumed yet (`buffered`), and the sum of the streams'
windows (`committed`, what the peer is allowed to make us hold). Three rules use it:

* a stream's window grows (see streams.py) only while all windows fit the cap, so the
  windows of stalled streams cannot add up beyond it, except for the small window every
  new stream starts with;
* credit returns (WINDOW) are *deferred* while `buffered` is at half the cap, per stream,
  and resumed once consumption brings it below;
* the hard cap: a DATA frame that would take `buffered` beyond `config.session_buffer`
  (or a relay's shared `BufferPool` beyond its limit) resets its stream (RST BUSY)
  instead of being held. Memory is therefore bounded by the cap, whatever the number of
  stalled streams. Every session-wide bound on what a peer can make us hold belongs here
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


class BufferPool:
    """Received-but-unconsumed bytes (and granted windows) of *all* sessions of a relay
    against one limit (`--relay-buffer`); shared by reference, still pure."""

    __slots__ = ("limit", "buffered", "committed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffered = 0
        self.committed = 0  # sum of the streams' current windows


class SessionBudget:
    """Received-but-unconsumed bytes of all streams against `config.session_buffer` (and
    the relay's `BufferPool`, if any); see the module docstring."""

    __slots__ = ("config", "buffered", "committed", "deferred", "pool")

    def __init__(self, config: SessionConfig, pool: BufferPool | None = None) -> None:
        self.config = config
        self.buffered = 0
        self.committed = 0  # sum of the streams' windows: what the peers may make us hold
        self.deferred: set[int] = set()  # streams whose credit return waits for room
        self.pool = pool

    @property
    def has_room(self) -> bool:
        """Credit may be returned: below half the cap (the other half absorbs what the
        credit already out there can still bring)."""
        pool = self.pool
        if pool is not None and pool.buffered >= pool.limit // 2:
            return False
        return self.buffered < self.config.session_buffer // 2

    def fits(self, n: int) -> bool:
        """`n` more received bytes stay within the hard caps."""
        pool = self.pool
        if pool is not None and pool.buffered + n > pool.limit:
            return False
        return self.buffered + n <= self.config.session_buffer

    def may_grow(self, n: int) -> bool:
        """A stream's window may grow by `n`: all windows still fit the caps."""
        pool = self.pool
        if pool is not None and pool.committed + n > pool.limit:
            return False
        return self.committed + n <= self.config.session_buffer

    def commit(self, n: int) -> None:
        """Windows granted (+) or withdrawn with a forgotten stream (-)."""
        self.committed += n
        if self.pool is not None:
            self.pool.committed += n

    def received(self, n: int) -> None:
        self.buffered += n
        if self.pool is not None:
            self.pool.buffered += n

    def released(self, n: int) -> None:
        """Consumed by the application, or no longer counted (the stream was forgotten)."""
        self.buffered -= n
        if self.pool is not None:
            self.pool.buffered -= n

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
