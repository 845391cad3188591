"""What a tunnel tells the application while it runs: typed events, live counters, and the
fan-out that gives every `Tunnel.events()` subscriber its own bounded queue."""

from __future__ import annotations

import trio

from trivpn.records import dataclass
from trivpn.session.netsettings import TunnelInfo

__all__ = ["Counters", "Down", "Reconnecting", "Renegotiated", "TunnelEvent", "Up"]

#: Events buffered per subscriber; a subscriber that falls further behind misses the newest
#: ones (counted in `Counters.events_dropped`) but never blocks the tunnel; the end of the
#: stream always reaches it.
EVENT_QUEUE = 64


@dataclass(frozen=True, slots=True)
class Up:
    """The tunnel is up again after a reconnect; `info` is the new session's (also in
    `Tunnel.info` from now on). The first session's is what `connect` yields."""

    info: TunnelInfo


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The session ended (`reason`); the next attempt starts after `delay` seconds. Packets
    sent meanwhile wait in the tunnel's queue (or are dropped when it is full)."""

    reason: str
    delay: float


@dataclass(frozen=True, slots=True)
class Renegotiated:
    """New data keys are in use (`key_id`); `count`: renegotiations since `connect`."""

    key_id: int
    count: int


@dataclass(frozen=True, slots=True)
class Down:
    """The tunnel has ended for good: `error` is what ended it (None: closed on request)."""

    reason: str
    error: BaseException | None = None


TunnelEvent = Up | Reconnecting | Renegotiated | Down


@dataclass(frozen=True, slots=True)
class Counters:
    """A snapshot of the tunnel's traffic since `connect`, across reconnects.

    `*_in`: packets that came out of the tunnel to the application; `*_out`: packets the
    application sent into it. Drops: `dropped_queue_full` (the application did not
    `receive` fast enough), `dropped_oversize` (empty or larger than a TUN packet),
    `dropped_data` (encrypted packets refused: unauthentic, replayed, malformed, unknown key).
    """

    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    dropped_queue_full: int
    dropped_oversize: int
    dropped_data: int
    reconnects: int
    renegotiations: int
    events_dropped: int

    @property
    def dropped(self) -> int:
        """Every packet dropped, whatever the reason."""
        return self.dropped_queue_full + self.dropped_oversize + self.dropped_data


class Broadcast:
    """Fan-out of events to subscribers, each with its own bounded queue."""

    def __init__(self) -> None:
        self._subscribers: list[trio.MemorySendChannel[TunnelEvent]] = []
        self._closed = False
        self.dropped = 0

    def subscribe(self) -> trio.MemoryReceiveChannel[TunnelEvent]:
        send, receive = trio.open_memory_channel[TunnelEvent](EVENT_QUEUE)
        if self._closed:
            send.close()  # the tunnel has ended: the subscriber sees the end at once
        else:
            self._subscribers.append(send)
        return receive

    def publish(self, event: TunnelEvent) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.remove(send)  # that subscriber went away

    def close(self) -> None:
        self._closed = True
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()
