"""The networkio service: a reader task and a writer task around one transport.

Up: every `recv_batch` (a drained socket) becomes one list on `up`. Down: each list received
from `down` is written with one `send_batch`. Closing `down` ends the writer; a transport
error ends the service with an exception, which cancels the whole stack. With `up=None`
the data-plane threads (`datachannel.fastpath`) own the receive side and only the writer runs.
"""

from __future__ import annotations

import trio

from trivpn.networkio.transport import Transport
from trivpn.workers.driver import hand_over


async def run_networkio(
    transport: Transport,
    up: trio.MemorySendChannel[list[bytes]] | None,
    down: trio.MemoryReceiveChannel[list[bytes]],
    *,
    close_transport: bool = True,
) -> None:
    """`close_transport=False` when other threads may still use the socket: its owner
    closes it after they are joined (a closed fd number can be reused at once)."""
    async def reader() -> None:
        assert up is not None
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
            if up is not None:
                nursery.start_soon(reader)
            nursery.start_soon(writer)
    finally:
        if close_transport:
            transport.close()
