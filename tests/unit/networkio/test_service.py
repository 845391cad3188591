"""networkio's reader ends quietly when the layer above has closed its channel: that
layer's own exit or error says why (before, hand_over raised BrokenResourceError, which
could hide an AUTH_FAILED)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from trivpn.networkio.service import run_networkio


class FakeTransport:
    """Always has a datagram to read; records what is written and whether it was closed."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    async def recv_batch(self) -> list[bytes]:
        await trio.sleep(0.001)
        return [b"datagram"]

    async def send_batch(self, packets: Sequence[bytes]) -> None:
        self.sent.extend(packets)

    def close(self) -> None:
        self.closed = True


async def test_reader_ends_when_the_layer_above_closed_its_channel() -> None:
    transport: Any = FakeTransport()
    up_send, up_receive = trio.open_memory_channel[list[bytes]](1)
    down_send, down_receive = trio.open_memory_channel[list[bytes]](1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_networkio, transport, up_send, down_receive)
            assert await up_receive.receive() == [b"datagram"]
            await up_receive.aclose()  # the layer above ended (e.g. AUTH_FAILED)
            await trio.sleep(0.05)  # the reader meets the closed channel: no error
            await down_send.send([b"still written"])
            await down_send.aclose()  # the writer ends as before
    assert transport.sent == [b"still written"] and transport.closed
