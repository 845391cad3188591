"""Liveness of a reverse-tunnel session: pings, pongs and expiry (pure).

Once bound, each end sends PING every `interval` seconds (the relay's value; the client
adopts it in the handshake) and answers the peer's PINGs with PING|ACK echoing the 8
opaque bytes; a pong for one of our recent pings reports the round-trip time. *Any* byte
from the peer counts as a sign of life (`last_rx`, set by the session on every read), so
a busy connection needs no pongs to stay up: the session expires only after
`missed_heartbeats` intervals of complete silence. Only the last few pings are
remembered, so a peer that never answers cannot grow the table.
"""

from __future__ import annotations

import struct

from trivpn.reverse.config import SessionConfig
from trivpn.reverse.events import Event, Pong
from trivpn.reverse.frames import Flag, Frame, FrameType
from trivpn.reverse.scheduler import Scheduler

_U32 = struct.Struct("!I")


class Heartbeat:
    __slots__ = (
        "config",
        "interval",
        "last_rx",
        "next_ping",
        "_scheduler",
        "_events",
        "_sent",
        "_seq",
    )

    def __init__(
        self, config: SessionConfig, now: float, scheduler: Scheduler, events: list[Event]
    ) -> None:
        self.config = config
        self.interval = config.heartbeat
        self.last_rx = now
        self.next_ping = float("inf")  # no pings before the session is bound
        self._scheduler = scheduler
        self._events = events
        self._sent: dict[bytes, float] = {}
        self._seq = 0

    def start(self, interval: float) -> None:
        """The session is bound: the first ping is due one interval after we last heard."""
        self.interval = interval
        self.next_ping = self.last_rx + interval

    @property
    def silence_limit(self) -> float:
        return self.interval * self.config.missed_heartbeats

    def deadline(self) -> float:
        return min(self.next_ping, self.last_rx + self.silence_limit)

    def on_ping(self, f: Frame, now: float) -> None:
        if f.flags & Flag.ACK:
            sent = self._sent.pop(f.payload, None)
            if sent is not None:
                self._events.append(Pong(now - sent))
        else:
            self._scheduler.control(FrameType.PING, Flag.ACK, 0, f.payload)

    def check(self, now: float) -> str | None:
        """Ping if one is due; returns why the session expired, or None."""
        if now >= self.last_rx + self.silence_limit:
            return f"no heartbeat from the peer for {self.silence_limit:g} s"
        if now >= self.next_ping:
            self._seq += 1
            opaque = _U32.pack(self._seq) + _U32.pack(0)
            self._sent[opaque] = now
            if len(self._sent) > self.config.missed_heartbeats + 1:
                self._sent.pop(next(iter(self._sent)))
            self._scheduler.control(FrameType.PING, payload=opaque)
            self.next_ping = now + self.interval
        return None
