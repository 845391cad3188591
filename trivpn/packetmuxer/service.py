"""The packet muxer service: one task up (route), one task down (frame control, resets).

Both roles: the client's resets leave on the timer, the server's answer leaves right after
the receive that asked for it.

Data packets are routed to the data channel as one batch per received batch and never
touch the reliable layer; outgoing data packets do not pass through here at all (the data
channel writes to networkio directly).
"""

from __future__ import annotations

import logging
import time

import trio

from trivpn.messages import DynamicWrapKey, MuxToReliable, ReliableToMux
from trivpn.packetmuxer.core import PacketMuxer
from trivpn.workers.driver import CoreTimer, Outbox, hand_over

log = logging.getLogger("trivpn.packetmuxer")


async def run_packetmuxer(
    core: PacketMuxer,
    *,
    net_up: trio.MemoryReceiveChannel[list[bytes]],
    net_down: trio.MemorySendChannel[list[bytes]],
    data_up: trio.MemorySendChannel[list[bytes]],
    ctrl_up: trio.MemorySendChannel[list[MuxToReliable]],
    ctrl_down: trio.MemoryReceiveChannel[list[ReliableToMux]],
) -> None:
    to_net: Outbox[bytes] = Outbox(net_down)
    timer = CoreTimer()

    async def flush_resets() -> None:
        before = core.stats.resets_sent
        await to_net.flush(lambda: core.datagrams_to_send(trio.current_time()))
        if core.stats.resets_sent > 1 and core.stats.resets_sent != before:
            if core.is_server:
                log.debug("answering a repeated client reset (answer %d)", core.stats.resets_sent)
            else:
                log.warning("no answer from the server yet; resending reset (attempt %d)", core.stats.resets_sent)

    async def up() -> None:
        refused_logged = False
        async with net_up, data_up, ctrl_up:
            async for batch in net_up:
                data, control = core.receive_datagrams(batch, trio.current_time())
                events = core.events()
                if events:
                    timer.poke()
                if core.is_server:
                    if core.answer_owed:  # a client reset to answer
                        await flush_resets()
                    if core.stats.drop_unsupported and not refused_logged:
                        refused_logged = True
                        log.warning("a client sent a tls-crypt-v2 reset to a session that has no tls-crypt-v2 key")
                if data:
                    await hand_over(data_up, data)
                if events or control:
                    await ctrl_up.send([*events, *control])

    async def down() -> None:
        async with ctrl_down:
            async for batch in ctrl_down:
                now = trio.current_time()
                out: list[bytes] = []
                for item in batch:
                    if isinstance(item, DynamicWrapKey):
                        core.set_dynamic_wrap(item.key, now_unix=int(time.time()))
                        continue
                    out.extend(core.wrap_control(item.key_id, item.packets, now))
                await to_net.send(out)
        # the layers above are gone: nothing left to do down here
        nursery.cancel_scope.cancel()

    async def on_timer() -> None:
        core.handle_timer(trio.current_time())
        await flush_resets()

    async with net_down:
        core.start(trio.current_time())
        await flush_resets()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(up)
            nursery.start_soon(down)
            nursery.start_soon(timer.run, core.get_timer, on_timer)
