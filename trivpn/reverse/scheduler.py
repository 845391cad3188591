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

`SessionBudget` is the receive side's session-wide cap C (`config.session_buffer`, and
P for a relay's shared `BufferPool`, `--relay-buffer`): bytes that arrived on any stream
but that the application has not consumed yet (`buffered`), and `grown`, the sum over
the streams of what their windows grew beyond the start window W0. A stream can never
hold more than its window, so these rules bound memory without ever starving a reader:

* a stream's window grows (see streams.py) only while all the growth fits *half* the cap
  (`grown` <= C/2, and <= P/2 over the pool), and never while `buffered` is at half the
  cap (`has_room`): stalled streams' grown windows cannot take more than that half;
* credit returns are never deferred: a stream whose reader consumes gets its credit back
  whatever the other streams hold. Under pressure (no `has_room`) a grown window gives
  back only what keeps it at W0 (it *shrinks*), so the base window W0 is what every
  stream keeps, a stalled one's grown window drains back as it is read;
* the hard cap: a DATA frame that would take `buffered` beyond C (or the pool beyond P)
  first resets (RST BUSY) the session's streams that hold more than its own stream does,
  largest first, then, if that does not make it fit, its own stream. So the
  received-but-unconsumed bytes never exceed C per session and P per relay, and the
  streams reset are the largest holders (stalled readers), not a reader that keeps up.

Figures: a session holds at most min(C, N*W0 + C/2) with N open streams and resets
nothing while N <= C/(2*W0) (128 with the defaults 16 MiB and 64 KiB); a relay holds at
most P. Every session-wide bound on what a peer can make us hold belongs here (or, for
what we queue to send, in the `Scheduler`).
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
    """Received-but-unconsumed bytes (and window growth) of *all* sessions of a relay
    against one limit (`--relay-buffer`); shared by reference, still pure."""

    __slots__ = ("limit", "buffered", "grown")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffered = 0
        self.grown = 0  # sum of what the streams' windows grew beyond the start window


class SessionBudget:
    """Received-but-unconsumed bytes of all streams against `config.session_buffer` (and
    the relay's `BufferPool`, if any); see the module docstring."""

    __slots__ = ("config", "buffered", "grown", "pool")

    def __init__(self, config: SessionConfig, pool: BufferPool | None = None) -> None:
        self.config = config
        self.buffered = 0
        self.grown = 0  # sum of the streams' window - start window: the growth granted
        self.pool = pool

    @property
    def has_room(self) -> bool:
        """Windows may grow (else grown ones shrink back): below half the cap."""
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
        """A stream's window may grow by `n`: all growth still fits half the caps (the
        other half is for the start windows)."""
        pool = self.pool
        if pool is not None and pool.grown + n > pool.limit // 2:
            return False
        return self.grown + n <= self.config.session_buffer // 2

    def grow(self, n: int) -> None:
        """A window grew (+) or shrank / was forgotten (-) by `n` beyond its start."""
        self.grown += n
        if self.pool is not None:
            self.pool.grown += n

    def received(self, n: int) -> None:
        self.buffered += n
        if self.pool is not None:
            self.pool.buffered += n

    def released(self, n: int) -> None:
        """Consumed by the application, or no longer counted (the stream was forgotten)."""
        self.buffered -= n
        if self.pool is not None:
            self.pool.buffered -= n
