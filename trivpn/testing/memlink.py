"""An in-memory, impairable network link between two session stacks (no sockets, no root).

Theory of operation: each end of the link is a pair of `list[bytes]` channels shaped exactly
like networkio's (`net_up` delivers datagrams to a stack, `net_down` takes the datagrams it
sends), so a session stack cannot tell the link from a UDP socket. Every datagram goes
through the sans-IO `RelayCore` of `trivpn.testing.relaycore` — the same seeded knobs (drop,
reorder, duplicate, delay, corrupt, ...) with the same per-datagram determinism — one core
per direction, so a stalled direction never holds up the other. UP is client → server.

A direction has two tasks: the reader feeds what its stack sent into the core, the releaser
sleeps until the core's next due time (a clean link is due at once) and delivers what is
due as one batch. Delivery waits when the receiving stack is slow (backpressure, so a
clean link really loses nothing); the core's `max_pending` bounds what is held meanwhile,
beyond which datagrams are dropped and counted as overflow. Time is trio's clock, so
`trio.testing.MockClock(autojump_threshold=0)` makes delays and timeouts instant.
"""

from __future__ import annotations

import math
from dataclasses import replace

import trio

from trivpn.records import dataclass
from trivpn.testing.relaycore import DOWN, UP, Counters, RelayConfig, RelayCore

#: Batches in flight per link channel (as between networkio and the muxer).
LINK_CHANNEL_SIZE = 8


@dataclass(frozen=True, slots=True)
class LinkEnd:
    """One stack's side of the link: it reads `net_up` and writes `net_down`."""

    net_up: trio.MemoryReceiveChannel[list[bytes]]
    net_down: trio.MemorySendChannel[list[bytes]]


class _Direction:
    def __init__(self, config: RelayConfig, direction: int) -> None:
        self.core = RelayCore(config)
        self.direction = direction
        self.wake = trio.Event()
        self.from_sender_s, self.from_sender_r = trio.open_memory_channel[list[bytes]](LINK_CHANNEL_SIZE)
        self.to_receiver_s, self.to_receiver_r = trio.open_memory_channel[list[bytes]](LINK_CHANNEL_SIZE)

    @property
    def counters(self) -> Counters:
        return self.core.counters[self.direction]

    async def read(self) -> None:
        async with self.from_sender_r:
            async for batch in self.from_sender_r:
                now = trio.current_time()
                for datagram in batch:
                    self.core.receive_datagram(self.direction, datagram, now)
                self.wake.set()

    async def release(self) -> None:
        async with self.to_receiver_s:
            while True:
                self.wake = trio.Event()
                due = self.core.get_timer()
                with trio.move_on_at(math.inf if due is None else due):
                    await self.wake.wait()
                out = [d for _, d in self.core.datagrams_to_send(trio.current_time())]
                if out:
                    try:
                        await self.to_receiver_s.send(out)
                    except trio.BrokenResourceError:
                        return  # the receiving stack is gone: like a closed port



class MemoryLink:
    """Joins a client end and a server end through seeded impairments (see the docstring)."""

    def __init__(self, config: RelayConfig | None = None) -> None:
        config = config or RelayConfig()
        config.validate()
        self.config = config
        # each direction draws from its own generator, seeded as in the UDP relay
        self._dirs = (_Direction(config, UP), _Direction(replace(config), DOWN))
        up, down = self._dirs
        self.client = LinkEnd(net_up=down.to_receiver_r, net_down=up.from_sender_s)
        self.server = LinkEnd(net_up=up.to_receiver_r, net_down=down.from_sender_s)

    @property
    def counters(self) -> tuple[Counters, Counters]:
        """What happened to the datagrams of each direction (UP, DOWN)."""
        return (self._dirs[0].counters, self._dirs[1].counters)

    async def run(self) -> None:
        """Move datagrams until cancelled (a direction whose sender closed stops reading)."""
        async with trio.open_nursery() as nursery:
            for d in self._dirs:
                nursery.start_soon(d.read)
                nursery.start_soon(d.release)
