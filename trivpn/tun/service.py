"""The TUN service: moves whole batches between a TUN device and the data channel."""

from __future__ import annotations

from typing import Any

import trio

from trivpn.workers.driver import hand_over


async def run_tun(
    device: Any,
    *,
    to_data: trio.MemorySendChannel[list[bytes]],
    from_data: trio.MemoryReceiveChannel[list[bytes]],
) -> None:
    """`device` is a LinuxTun or a UserspaceTun (read_batch/write_batch)."""

    async def reader() -> None:
        async with to_data:
            while True:
                batch = await device.read_batch()
                if not batch:
                    return
                await hand_over(to_data, batch)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        async with from_data:
            async for batch in from_data:
                await device.write_batch(batch)
        nursery.cancel_scope.cancel()
