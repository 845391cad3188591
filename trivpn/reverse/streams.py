"""The streams of one reverse-tunnel session: state, credit flow control, FIN/RST (pure).

Theory of operation
-------------------
Only the relay opens streams (one per public TCP connection), with increasing ids. Data
may follow OPEN immediately; the client answers OPEN|ACK once the local service accepted,
or RST. A client that sees an id it has seen before has a broken peer: that is a
session-level protocol error (RemoteProtocolError), like any rule only the peer can break
on the session. Everything else that goes wrong on one stream stays on that stream.

Credit, per stream and direction. The receiver grants `window` bytes at the start
(announced in HELLO / HELLO_ACK, so `peer_window` is the credit we start with when
sending) and grants more (WINDOW) only as the application *consumes* bytes
(`consumed(sid, n)`), once half a window has been consumed, so a stalled reader holds at
most one window and never blocks the connection. A peer that sends beyond its credit,
sends after its FIN, or returns a bad increment broke the rules for that stream only: it
is reset (RST) and the session goes on. While the `SessionBudget` is at its cap, credit
returns are deferred instead of sent.

Sending: `send_data` queues bytes on the stream (reporting back-pressure once
`send_buffer` bytes wait) and tells the `Scheduler` the stream is ready; the scheduler
later `pull`s DATA frames within the stream's credit. `send_fin` queues a FIN after the
queued bytes. When credit returns (WINDOW), a stream with bytes waiting is ready again.

FIN ends one direction; the other keeps flowing until its own FIN. RST aborts both. A
stream is forgotten when FIN went both ways, or on RST; frames for a forgotten (or never
known) stream are late, not hostile: ignored and counted. A stream half-closed for longer
than `linger` is reset, so a peer that never sends its FIN cannot leak it.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from trivpn.errors import RemoteProtocolError
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


@dataclass(slots=True)
class StreamState:
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
    half_closed_at: float | None = None


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
        self._linger_q: deque[tuple[float, int]] = deque()
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
        self.table[sid] = StreamState(sid, self.peer_window, self.config.window)
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
        if st.pending_len >= self.config.send_buffer:
            st.want_writable = True
            return False
        return True

    def send_fin(self, sid: int) -> None:
        self._writable(sid).fin_queued = True
        self._scheduler.ready(sid)

    def reset(self, sid: int, code: ErrorCode) -> None:
        st = self.table.get(sid)
        if st is None:
            return
        self._scheduler.control(FrameType.RST, 0, sid, _U32.pack(code))
        # buffered bytes still belong to the application until it calls consumed();
        # we only stop counting them against the session here
        self._forget(st)

    def consumed(self, sid: int, n: int) -> None:
        st = self.table.get(sid)
        if n <= 0 or st is None:
            return  # a forgotten stream's bytes stopped counting when it was forgotten
        budget = self._budget
        n = min(n, st.buffered)
        budget.released(n)
        st.buffered -= n
        st.unreturned += n
        if not st.fin_received and st.unreturned >= self.config.window // 2:
            if budget.has_room:
                self._return_credit(st)
            else:
                budget.defer(sid)
        if budget.deferred:
            for other in budget.resume():
                o = self.table.get(other)
                if o is not None and not o.fin_received and o.unreturned:
                    self._return_credit(o)

    def pending_bytes(self, sid: int) -> int:
        st = self.table.get(sid)
        return st.pending_len if st is not None else 0

    def reset_all(self, by_peer: bool) -> None:
        """The session ended: every stream is reset (reported, forgotten)."""
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
            fin = st.fin_queued and st.pending_len == 0
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
        if st.want_writable and st.pending_len <= self.config.send_buffer // 2:
            st.want_writable = False
            self._events.append(StreamWritable(sid))
        again = st.send_credit > 0 and (bool(st.pending_len) or (st.fin_queued and not st.fin_sent))
        return n, again

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        return self._linger_q[0][0] if self._linger_q else float("inf")

    def expire(self, now: float) -> None:
        """Reset streams half-closed for longer than `linger`."""
        q = self._linger_q
        while q and q[0][0] <= now:
            _, sid = q.popleft()
            st = self.table.get(sid)
            if st is not None and st.half_closed_at is not None:
                if st.half_closed_at + self.config.linger <= now:
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
        self.table[sid] = StreamState(sid, self.peer_window, self.config.window)
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
        st.recv_credit -= n
        if n:
            st.buffered += n
            self._budget.received(n)
            self._events.append(StreamData(st.sid, f.payload))
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

    def _return_credit(self, st: StreamState) -> None:
        inc = st.unreturned
        st.unreturned = 0
        st.recv_credit += inc
        self._scheduler.control(FrameType.WINDOW, 0, st.sid, _U32.pack(inc))

    def _after_fin(self, st: StreamState, now: float) -> None:
        if st.fin_sent and st.fin_received:
            self._forget(st)
            self._events.append(StreamClosed(st.sid))
        elif st.half_closed_at is None:
            st.half_closed_at = now
            self._linger_q.append((now + self.config.linger, st.sid))

    def _forget(self, st: StreamState) -> None:
        self.table.pop(st.sid, None)
        self._budget.forget(st.sid)
        self._budget.released(st.buffered)
        st.buffered = 0
        st.pending = None
        st.pending_len = 0

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
