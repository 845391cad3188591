"""The networkio service: a reader task and a writer task around one transport.

Up: every `recv_batch` (a drained socket) becomes one list on `up`. Down: each list received
from `down` is written with one `send_batch`. Closing `down` ends the writer; a transport
error ends the service with an exception, which cancels the whole stack.
"""

from __future__ import annotations

import trio

from trivpn.networkio.transport import Transport
from trivpn.workers.driver import hand_over


async def run_networkio(
    transport: Transport,
    up: trio.MemorySendChannel[list[bytes]],
    down: trio.MemoryReceiveChannel[list[bytes]],
) -> None:
    async def reader() -> None:
        async with up:
            while True:
                batch = await transport.recv_batch()
                await hand_over(up, batch)

    async def writer() -> None:
        async with down:
            async for batch in down:
                await transport.send_batch(batch)
        nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)
    finally:
        transport.close()
