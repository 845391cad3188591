"""The reliable-transport service: runs `ReliableKeys` (one core per key id) in three tasks.

up:    control packets from the muxer → ACK processing, in-order messages to the control
       channel, and any ACKs/retransmissions down to the muxer.
down:  messages from the control channel → queued in the core → packets to the muxer.
timer: retransmissions when the core's deadline passes.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from trivpn.messages import (
    ControlToReliable,
    DynamicWrapKey,
    MuxToReliable,
    ReliableToControl,
    ReliableToMux,
    ResetComplete,
)
from trivpn.reliabletransport.core import ReliableTransport
from trivpn.reliabletransport.keys import ReliableKeys, after_hard_reset
from trivpn.workers.driver import CoreTimer, Outbox


class ReliableService:
    def __init__(
        self,
        *,
        from_mux: trio.MemoryReceiveChannel[list[MuxToReliable]],
        to_mux: trio.MemorySendChannel[list[ReliableToMux]],
        to_cc: trio.MemorySendChannel[list[ReliableToControl]],
        from_cc: trio.MemoryReceiveChannel[list[ControlToReliable]],
        first_key_factory: Callable[[], ReliableTransport] | None = None,
        is_server: bool = False,
    ) -> None:
        """`first_key_factory` builds key 0's core after the reset exchange (default: the
        role's `after_hard_reset`)."""
        self.keys = ReliableKeys(is_server=is_server)
        self._from_mux = from_mux
        self._from_cc = from_cc
        self._to_mux: Outbox[ReliableToMux] = Outbox(to_mux)
        self._to_cc: Outbox[ReliableToControl] = Outbox(to_cc)
        self._timer = CoreTimer()
        self._first_key_factory = first_key_factory

    @property
    def cores(self) -> dict[int, ReliableTransport]:
        return self.keys.cores

    @property
    def dropped_unknown_key(self) -> int:
        return self.keys.dropped_unknown_key

    def _collect_packets(self) -> list[ReliableToMux]:
        return list(self.keys.packets_to_send(trio.current_time()))

    async def _flush_down(self) -> None:
        await self._to_mux.flush(self._collect_packets)
        self._timer.poke()

    async def _up(self) -> None:
        async with self._from_mux, self._to_cc.channel:
            async for batch in self._from_mux:
                now = trio.current_time()
                ups: list[ReliableToControl] = []
                for item in batch:
                    if isinstance(item, ResetComplete):
                        factory = self._first_key_factory
                        self.keys.open_first(factory() if factory is not None else None)
                        ups.append(item)
                    else:
                        self.keys.receive_packet(item, now)

                def collect(ups: list[ReliableToControl] = ups) -> list[ReliableToControl]:
                    ups.extend(self.keys.messages_received())
                    return ups

                await self._to_cc.flush(collect)
                await self._flush_down()

    async def _down(self) -> None:
        async with self._from_cc:
            async for batch in self._from_cc:
                for msg in batch:
                    if isinstance(msg, DynamicWrapKey):
                        await self._to_mux.send([msg])  # for the muxer
                        continue
                    self.keys.send(msg)
                await self._flush_down()

    async def _on_timer(self) -> None:
        self.keys.handle_timer(trio.current_time())
        await self._flush_down()

    async def run(self) -> None:
        async with self._to_mux.channel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._up)
                nursery.start_soon(self._timer.run, self.keys.get_timer, self._on_timer)
                await self._down()
                nursery.cancel_scope.cancel()


__all__ = ["ReliableService", "after_hard_reset"]
