"""The streams of one reverse-tunnel session: state, credit flow control, FIN/RST (pure).

Theory of operation
-------------------
Only the relay opens streams (one per public TCP connection), with increasing ids. Data
may follow OPEN immediately; the client answers OPEN|ACK once the local service accepted,
or RST. A client that sees an id it has seen before has a broken peer: that is a
session-level protocol error (RemoteProtocolError), like any rule only the peer can break
on the session. Everything else that goes wrong on one stream stays on that stream.

Credit, per stream and direction. Every stream starts with a small window,
`config.start_window` (announced in HELLO / HELLO_ACK, so `peer_window` is the credit we
start with when sending). The receiver grants more (WINDOW) only as the application
*consumes* bytes (`consumed(sid, n)`), once half the stream's window has been consumed,
and each such return also *grows* the window (doubling, up to `config.window`) while the
`SessionBudget` says the growth still fits half the session's cap: a stream that is read
quickly gets a large window after a few round trips, a stalled one keeps its small one.
Credit is never withheld from a reader that consumes: while the budget is at half its cap
a grown window returns only what keeps it at the start window (it shrinks back), one at
the start window returns everything. A DATA frame that would take the buffered bytes
beyond the hard cap resets (BUSY) the session's streams that hold more than its own,
largest first, and its own stream only if that does not make room; see scheduler.py.
A peer that sends beyond its credit, sends after its FIN, or returns a bad increment
broke the rules for that stream only: it is reset (RST) and the session goes on.

Stalled readers: a stream holding received bytes that the application has not consumed
for `config.stall_timeout` is reset (TIMEOUT), FIN or not, so a public client (or local
service) that never reads cannot pin memory and a descriptor.

Sending: `send_data` queues bytes on the stream and tells the `Scheduler` the stream is
ready; the scheduler later `pull`s DATA frames within the stream's credit. Back-pressure
(False, then StreamWritable) comes once `send_buffer` bytes wait *or* more bytes wait than
the credit can carry, so the producer stops reading its socket while the peer grants
nothing: a stalled stream queues at most about one read. `send_fin` queues a FIN after the
queued bytes. When credit returns (WINDOW), a stream with bytes waiting is ready again.

FIN ends one direction; the other keeps flowing until its own FIN. RST aborts both. A
stream is forgotten when FIN went both ways, or on RST; frames for a forgotten (or never
known) stream are late, not hostile: ignored and counted. A stream half-closed for longer
than `linger` is reset, so a peer that never sends its FIN cannot leak it; the linger
starts when our FIN is queued (it may wait behind bytes the peer never grants credit
for), and each DATA frame we still send moves it forward.
"""

from __future__ import annotations

import heapq
import struct
from collections import deque

from trivpn.errors import RemoteProtocolError
from trivpn.records import dataclass
from trivpn.reverse.config import MAX_STREAM_ID, MAX_WINDOW, SessionConfig
from trivpn.reverse.events import (
    Event,
    Ignored,
    StreamAccepted,
    StreamClosed,
    StreamClosedError,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamReset,
    StreamWritable,
)
from trivpn.reverse.frames import MAX_TEXT, ErrorCode, Flag, Frame, FrameType, header, text
from trivpn.reverse.scheduler import Scheduler, SessionBudget

_U32 = struct.Struct("!I")
_LINGER, _STALL, _DRY = 0, 1, 2  # the kinds of stream timer


@dataclass(slots=True)
class StreamState:
    sid: int
    send_credit: int
    recv_credit: int  # bytes the peer may still send before our next WINDOW
    window: int  # our current receive window for it (grows, see the module docstring)
    accepted: bool = False
    pending: deque[bytes] | None = None  # made on first use: an empty deque costs ~0.7 KiB
    pending_len: int = 0
    fin_queued: bool = False
    fin_sent: bool = False
    fin_received: bool = False
    buffered: int = 0  # received, not yet consumed
    unreturned: int = 0  # consumed, credit not yet given back
    want_writable: bool = False
    half_closed_at: float | None = None
    stall_at: float | None = None  # when to check the reader (bytes are buffered)
    progress_at: float | None = None  # last consumption (-1: at an unknown time)
    dry_at: float | None = None  # our send credit ran out (the peer grants nothing)


class Streams:
    """The stream table of one session end; see the module docstring for the rules."""

    def __init__(
        self,
        role: str,
        config: SessionConfig,
        scheduler: Scheduler,
        budget: SessionBudget,
        events: list[Event],
    ) -> None:
        self.role = role
        self.config = config
        self.table: dict[int, StreamState] = {}
        self.peer_window = 0  # the credit each new stream starts with, set once bound
        self.binding_prefix = False  # protocol 2: OPEN starts with the binding index
        self.ignored = 0
        self._scheduler = scheduler
        self._budget = budget
        self._events = events
        self._timers: list[tuple[float, int, int]] = []  # (deadline, sid, kind), a heap
        self._closing = False  # the session ended: no more credit goes out
        self._next_sid = 1
        self._highest_sid = 0

    # ------------------------------------------------------------------ local actions

    def open(self, peer: str, binding: int | None = None) -> int:
        """Relay: a new public connection; returns its stream id."""
        if len(self.table) >= self.config.max_streams:
            raise StreamClosedError("too many streams")
        sid = self._next_sid
        if sid > MAX_STREAM_ID:
            raise StreamClosedError("stream ids exhausted")
        self._next_sid += 1
        self.table[sid] = self._new(sid)
        payload = peer.encode()[:MAX_TEXT]
        if binding is not None:  # protocol 2: the binding index comes first
            payload = bytes([binding]) + payload
        self._scheduler.control(FrameType.OPEN, 0, sid, payload)
        return sid

    def accept(self, sid: int) -> None:
        """Client: the local service accepted the connection for this stream."""
        st = self.table.get(sid)
        if st is None or self.role != "client":
            raise StreamClosedError(f"stream {sid} is not open")
        if not st.accepted:
            st.accepted = True
            self._scheduler.control(FrameType.OPEN, Flag.ACK, sid)

    def send_data(self, sid: int, data: bytes) -> bool:
        st = self._writable(sid)
        if data:
            if st.pending is None:
                st.pending = deque()
            st.pending.append(data)
            st.pending_len += len(data)
            if st.send_credit > 0:
                self._scheduler.ready(sid)
        if st.pending_len >= self.config.send_buffer or st.pending_len > st.send_credit:
            st.want_writable = True
            return False
        return True

    def awaiting_writable(self, sid: int) -> bool:
        """The producer should wait: StreamWritable will come (or a reset)."""
        st = self.table.get(sid)
        return st is not None and st.want_writable

    def send_fin(self, sid: int, now: float | None = None) -> None:
        st = self._writable(sid)
        st.fin_queued = True
        self._scheduler.ready(sid)
        if now is not None and st.half_closed_at is None:
            self._start_linger(st, now)

    def reset(self, sid: int, code: ErrorCode) -> None:
        st = self.table.get(sid)
        if st is None:
            return
        self._scheduler.control(FrameType.RST, 0, sid, _U32.pack(code))
        # buffered bytes still belong to the application until it calls consumed();
        # we only stop counting them against the session here
        self._forget(st)

    def consumed(self, sid: int, n: int, now: float | None = None) -> None:
        st = self.table.get(sid)
        if n <= 0 or st is None:
            return  # a forgotten stream's bytes stopped counting when it was forgotten
        budget = self._budget
        n = min(n, st.buffered)
        budget.released(n)
        st.buffered -= n
        st.unreturned += n
        st.progress_at = now if now is not None else -1.0
        if not st.fin_received and st.unreturned >= st.window // 2 and not self._closing:
            self._return_credit(st)

    def pending_bytes(self, sid: int) -> int:
        st = self.table.get(sid)
        return st.pending_len if st is not None else 0

    def reset_all(self, by_peer: bool) -> None:
        """The session ended: every stream is reset (reported, forgotten)."""
        self._closing = True
        for sid in list(self.table):
            self._events.append(StreamReset(sid, ErrorCode.CANCEL, by_peer=by_peer))
            self._forget(self.table[sid])

    # ------------------------------------------------------------------ output

    def pull(self, sid: int, limit: int, out: list[bytes], now: float) -> tuple[int, bool]:
        """The scheduler's `DataSource`: one DATA frame within the stream's credit."""
        st = self.table.get(sid)
        if st is None:
            return 0, False
        n = min(st.pending_len, st.send_credit, limit)
        if n > 0:
            payload = _take(st, n)
            if not st.pending_len:
                st.pending = None  # idle streams keep no deque
            st.send_credit -= n
            if not st.send_credit and st.dry_at is None:
                st.dry_at = now
                heapq.heappush(self._timers, (now + self.config.stall_timeout, sid, _DRY))
            fin = st.fin_queued and st.pending_len == 0
            if st.fin_queued and st.half_closed_at is not None and not st.fin_received:
                st.half_closed_at = now  # still sending what precedes our FIN
            out.append(header(FrameType.DATA, Flag.FIN if fin else 0, sid, n))
            out.append(payload)
        elif st.pending_len == 0 and st.fin_queued and not st.fin_sent:
            fin = True
            out.append(header(FrameType.DATA, Flag.FIN, sid, 0))
        else:
            return 0, False  # no credit: WINDOW makes it ready again
        if fin:
            st.fin_sent = True
            self._after_fin(st, now)
            if sid not in self.table:
                return n, False
        if (
            st.want_writable
            and st.pending_len <= self.config.send_buffer // 2
            and st.pending_len <= st.send_credit
        ):
            st.want_writable = False
            self._events.append(StreamWritable(sid))
        again = st.send_credit > 0 and (bool(st.pending_len) or (st.fin_queued and not st.fin_sent))
        return n, again

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        return self._timers[0][0] if self._timers else float("inf")

    def expire(self, now: float) -> None:
        """Reset streams half-closed for longer than `linger`, and stalled readers."""
        timers = self._timers
        timeout = self.config.stall_timeout
        while timers and timers[0][0] <= now:
            deadline, sid, kind = heapq.heappop(timers)
            st = self.table.get(sid)
            if st is None:
                continue
            if kind == _LINGER:
                if st.half_closed_at is None:
                    continue
                due = st.half_closed_at + self.config.linger
                if due > now:  # moved forward by progress meanwhile
                    heapq.heappush(timers, (due, sid, _LINGER))
                    continue
            elif kind == _DRY:
                if st.dry_at is None or st.send_credit or deadline < st.dry_at + timeout:
                    continue  # credit came meanwhile (this entry is stale)
                if not (st.pending_len or (st.fin_queued and not st.fin_sent)):
                    heapq.heappush(timers, (now + timeout, sid, _DRY))  # idle: look again
                    continue
                self._ignore(f"stream {sid} reset: the peer granted no credit for {timeout:g} s")
            else:
                if st.stall_at != deadline:
                    continue  # superseded
                if not st.buffered:
                    st.stall_at = None
                    continue
                if st.progress_at is not None:
                    base = now if st.progress_at < 0 else st.progress_at
                    st.progress_at = None
                    due = base + self.config.stall_timeout
                    if due > now:
                        st.stall_at = due
                        heapq.heappush(timers, (due, sid, _STALL))
                        continue
                self._ignore(
                    f"stream {sid} reset: its reader took nothing for "
                    f"{self.config.stall_timeout:g} s"
                )
            self.reset(sid, ErrorCode.TIMEOUT)
            self._events.append(StreamReset(sid, ErrorCode.TIMEOUT, by_peer=False))

    # ------------------------------------------------------------------ frames from the peer

    def on_open(self, f: Frame) -> None:
        sid = f.stream_id
        if self.role == "relay":
            if not f.flags & Flag.ACK:
                raise RemoteProtocolError("the client may not open streams")
            st = self.table.get(sid)
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
        if len(self.table) >= self.config.max_streams:
            self._scheduler.control(FrameType.RST, 0, sid, _U32.pack(ErrorCode.REFUSED))
            self._ignore(f"stream {sid} refused: too many streams")
            return
        self.table[sid] = self._new(sid)
        binding, peer = 0, f.payload
        if self.binding_prefix:
            if not peer:
                raise RemoteProtocolError("OPEN without its binding index")
            binding, peer = peer[0], peer[1:]
        self._events.append(StreamOpened(sid, text(peer), binding))

    def on_data(self, f: Frame, now: float) -> None:
        st = self.table.get(f.stream_id)
        if st is None:
            self._ignore(f"DATA for unknown stream {f.stream_id}")
            return
        n = len(f.payload)
        if st.fin_received:
            self._violation(st, ErrorCode.PROTOCOL, "DATA after FIN")
            return
        if n > st.recv_credit:
            self._violation(st, ErrorCode.FLOW_CONTROL, "DATA beyond the window")
            return
        if n and not self._budget.fits(n) and not self._make_room(st, n):
            self._violation(st, ErrorCode.BUSY, "the buffer limit is reached")
            return
        st.recv_credit -= n
        if n:
            st.buffered += n
            self._budget.received(n)
            self._events.append(StreamData(st.sid, f.payload))
            if st.stall_at is None:
                st.stall_at = now + self.config.stall_timeout
                heapq.heappush(self._timers, (st.stall_at, st.sid, _STALL))
        if f.flags & Flag.FIN:
            st.fin_received = True
            self._events.append(StreamEnded(st.sid))
            self._after_fin(st, now)

    def on_window(self, f: Frame) -> None:
        st = self.table.get(f.stream_id)
        if st is None:
            self._ignore(f"WINDOW for unknown stream {f.stream_id}")
            return
        inc = _U32.unpack(f.payload)[0]
        if inc == 0 or st.send_credit + inc > MAX_WINDOW:
            self._violation(st, ErrorCode.FLOW_CONTROL, "bad window increment")
            return
        st.send_credit += inc
        st.dry_at = None
        if st.pending_len or (st.fin_queued and not st.fin_sent):
            self._scheduler.ready(st.sid)

    def on_rst(self, f: Frame) -> None:
        st = self.table.get(f.stream_id)
        if st is None:
            self._ignore(f"RST for unknown stream {f.stream_id}")
            return
        raw = _U32.unpack(f.payload)[0]
        try:
            code = ErrorCode(raw)
        except ValueError:
            code = ErrorCode.INTERNAL
        self._forget(st)
        self._events.append(StreamReset(st.sid, code, by_peer=True))

    # ------------------------------------------------------------------ internals

    def _writable(self, sid: int) -> StreamState:
        st = self.table.get(sid)
        if st is None:
            raise StreamClosedError(f"stream {sid} is closed")
        if st.fin_queued:
            raise StreamClosedError(f"stream {sid} is half-closed for writing")
        return st

    def _new(self, sid: int) -> StreamState:
        start = self.config.start_window
        return StreamState(sid, self.peer_window, start, start)

    def _return_credit(self, st: StreamState) -> None:
        """Give consumed bytes back as credit: growing the window while the budget has
        room, else shrinking a grown one back towards the start window (never below)."""
        budget = self._budget
        if budget.has_room:
            change = min(st.window, self.config.window - st.window)
            if change <= 0 or not budget.may_grow(change):
                change = 0
        else:
            change = -min(st.window - self.config.start_window, st.unreturned)
        st.window += change
        budget.grow(change)
        inc = st.unreturned + change
        st.unreturned = 0
        if inc > 0:
            st.recv_credit += inc
            self._scheduler.control(FrameType.WINDOW, 0, st.sid, _U32.pack(inc))

    def _make_room(self, st: StreamState, n: int) -> bool:
        """`n` bytes for `st` do not fit: reset the streams that hold more than `st` does,
        largest first (stalled readers; a reader that keeps up holds little), until they
        fit. False: they still do not (then `st` is reset)."""
        mine = st.buffered
        bigger = sorted((-o.buffered, o.sid) for o in self.table.values() if o.buffered > mine)
        for minus_held, sid in bigger:  # bounded by the table, each reset leaves it; ties: oldest
            self._ignore(
                f"stream {sid} reset: the buffer limit is reached and it holds {-minus_held} bytes"
            )
            self.reset(sid, ErrorCode.BUSY)
            self._events.append(StreamReset(sid, ErrorCode.BUSY, by_peer=False))
            if self._budget.fits(n):
                return True
        return False

    def _after_fin(self, st: StreamState, now: float) -> None:
        if st.fin_sent and st.fin_received:
            self._forget(st)
            self._events.append(StreamClosed(st.sid))
        elif st.half_closed_at is None:
            self._start_linger(st, now)

    def _start_linger(self, st: StreamState, now: float) -> None:
        st.half_closed_at = now
        heapq.heappush(self._timers, (now + self.config.linger, st.sid, _LINGER))

    def _forget(self, st: StreamState) -> None:
        if self.table.pop(st.sid, None) is not None:
            self._budget.grow(self.config.start_window - st.window)
        self._budget.released(st.buffered)
        st.buffered = 0
        st.pending = None
        st.pending_len = 0
        timers = self._timers
        if len(timers) > 4 * len(self.table) + 1024:  # many streams came and went: prune
            timers[:] = [t for t in timers if t[1] in self.table]  # in place: expire() holds it
            heapq.heapify(timers)

    def _violation(self, st: StreamState, code: ErrorCode, why: str) -> None:
        """A stream-level error resets that stream only, never the session."""
        self._ignore(f"stream {st.sid} reset: {why}")
        self.reset(st.sid, code)
        self._events.append(StreamReset(st.sid, code, by_peer=False))

    def _ignore(self, reason: str) -> None:
        self.ignored += 1
        self._events.append(Ignored(reason))


def _take(st: StreamState, n: int) -> bytes:
    """The first `n` queued bytes of a stream (joining pieces only when a frame spans them)."""
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
