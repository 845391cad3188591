"""The reliable-transport service: one core per key id, driven by three tasks.

up:    control packets from the muxer → ACK processing, in-order messages to the control
       channel, and any ACKs/retransmissions down to the muxer.
down:  messages from the control channel → queued in the core → packets to the muxer.
timer: retransmissions when the core's deadline passes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from trivpn.messages import (
    ControlOut,
    ControlToReliable,
    DynamicWrapKey,
    MuxToReliable,
    ReliableMessage,
    ReliableToControl,
    ReliableToMux,
    ResetComplete,
)
from trivpn.reliabletransport.core import ReliableTransport
from trivpn.wire import Opcode
from trivpn.workers.driver import CoreTimer, Outbox

log = logging.getLogger("trivpn.reliabletransport")


def after_hard_reset(is_server: bool = False) -> ReliableTransport:
    """Key 0 after the muxer's reset exchange: message id 0 is used in both directions.

    The client still owes the ACK of the server's reset (a 2.6 server creates its state only
    when that ACK comes back with the cookie). The server owes nothing: its reset already
    carried the ACK of the client's 0, and the muxer answers every repeat of the client's
    reset, so the server core starts with no ACK pending.
    """
    return ReliableTransport(next_send_id=1, next_recv_id=1, initial_acks=() if is_server else (0,))


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
        self.cores: dict[int, ReliableTransport] = {}
        self._from_mux = from_mux
        self._from_cc = from_cc
        self._to_mux: Outbox[ReliableToMux] = Outbox(to_mux)
        self._to_cc: Outbox[ReliableToControl] = Outbox(to_cc)
        self._timer = CoreTimer()
        self._first_key_factory = first_key_factory or (lambda: after_hard_reset(is_server))
        self.dropped_unknown_key = 0
        #: keys whose core the peer's soft reset created (our reply must reuse it)
        self._peer_opened: set[int] = set()

    def _new_key(self, key_id: int) -> ReliableTransport:
        """A fresh core for a renegotiation: message ids restart at 0 with the soft reset.

        At most two keys stay: the one being negotiated and the one in use (older cores
        could only re-ACK packets of a key that no longer carries data).
        """
        self.cores.pop(key_id, None)
        while len(self.cores) >= 2:
            self.cores.pop(next(iter(self.cores)))
        core = ReliableTransport()
        self.cores[key_id] = core
        return core

    def _deadline(self) -> float | None:
        timers = [t for c in self.cores.values() if (t := c.get_timer()) is not None]
        return min(timers) if timers else None

    def _collect_packets(self) -> list[ReliableToMux]:
        now = trio.current_time()
        out: list[ReliableToMux] = []
        for kid, core in self.cores.items():
            pkts = core.packets_to_send(now)
            if pkts:
                out.append(ControlOut(kid, pkts))
        return out

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
                        self.cores[0] = self._first_key_factory()
                        ups.append(item)
                        continue
                    core = self.cores.get(item.key_id)
                    if core is None:
                        if item.opcode != Opcode.CONTROL_SOFT_RESET_V1:
                            self.dropped_unknown_key += 1
                            continue
                        core = self._new_key(item.key_id)
                        self._peer_opened.add(item.key_id)
                    core.receive_packet(item.opcode, item.acks, item.message_id, item.payload, now)

                def collect(ups: list[ReliableToControl] = ups) -> list[ReliableToControl]:
                    for kid, core in self.cores.items():
                        for op, payload in core.messages_received():
                            ups.append(ReliableMessage(kid, op, payload))
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
                    core = self.cores.get(msg.key_id)
                    if msg.opcode == Opcode.CONTROL_SOFT_RESET_V1:
                        # our reset opens the key unless the peer's reset already did
                        if msg.key_id not in self._peer_opened:
                            core = self._new_key(msg.key_id)
                        self._peer_opened.discard(msg.key_id)
                    if core is None:
                        self.dropped_unknown_key += 1
                        continue
                    core.send(msg.opcode, msg.payload)
                await self._flush_down()

    async def _on_timer(self) -> None:
        now = trio.current_time()
        for core in self.cores.values():
            core.handle_timer(now)
        await self._flush_down()

    async def run(self) -> None:
        async with self._to_mux.channel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._up)
                nursery.start_soon(self._timer.run, self._deadline, self._on_timer)
                await self._down()
                nursery.cancel_scope.cancel()
