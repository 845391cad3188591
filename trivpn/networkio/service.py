"""The networkio service: a reader task and a writer task around one transport.

Up: every `recv_batch` (a drained socket) becomes one list on `up`. Down: each list received
from `down` is written with one `send_batch`. Closing `down` ends the writer, closing `up`'s
receiving end the reader; a transport error ends the service with an exception, which
cancels the whole stack. With `up=None` the data-plane threads (`datachannel.fastpath`) own
the receive side and only the writer runs.
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
                try:
                    await hand_over(up, batch)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    # the layer above has ended (and closed its end): its own exit or error
                    # says why; ours would only hide that (e.g. an AUTH_FAILED as
                    # "internal error: BrokenResourceError")
                    return

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
