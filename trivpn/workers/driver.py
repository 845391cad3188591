"""Two small pieces every control-plane service shares.

`Outbox`: outputs of a sans-IO core must leave in the order the core produced them, even
when two tasks of one service flush concurrently; collecting *and* sending under one FIFO
lock guarantees that.

`CoreTimer`: sleeps until a core's `get_timer()` deadline and fires `on_fire`; any task that
may have moved the deadline calls `poke()` so the sleeper re-reads it.

`hand_over`: the data path's channel send. `MemorySendChannel.send` always yields to the
scheduler, even when the channel has room; on the data path the sender's own loop already
yields once per batch (waiting for its input), so the extra yield only costs a task switch
per hop. `hand_over` skips it unless the channel is full (then it waits: backpressure).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

T = TypeVar("T")


async def hand_over(channel: trio.MemorySendChannel[T], item: T) -> None:
    """Send `item`, yielding only if the channel is full (callers checkpoint elsewhere)."""
    try:
        channel.send_nowait(item)
    except trio.WouldBlock:
        await channel.send(item)


class Outbox(Generic[T]):
    """An ordered, batched output channel."""

    def __init__(self, channel: trio.MemorySendChannel[list[T]]) -> None:
        self.channel = channel
        self._lock = trio.StrictFIFOLock()

    async def flush(self, collect: Callable[[], list[T]]) -> None:
        async with self._lock:
            items = collect()
            if items:
                await self.channel.send(items)

    async def send(self, items: list[T]) -> None:
        if items:
            async with self._lock:
                await self.channel.send(items)


class CoreTimer:
    """Fires a callback at a core's deadline; re-reads the deadline when poked."""

    def __init__(self) -> None:
        self._changed = trio.Event()

    def poke(self) -> None:
        self._changed.set()

    async def run(
        self, get_deadline: Callable[[], float | None], on_fire: Callable[[], Awaitable[None]]
    ) -> None:
        while True:
            self._changed = trio.Event()
            deadline = get_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline) as scope:
                await self._changed.wait()
            if scope.cancelled_caught:
                await on_fire()
