"""Waiting in a trio test for what a plain thread does (no trio.Event can be set from there)."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def until(pred: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll `pred` every 5 ms until it holds; bounded in count and in time (`limit`)."""
    with trio.fail_after(limit):
        for _ in range(int(limit / 0.005)):
            if pred():
                return
            await trio.sleep(0.005)
    raise AssertionError(f"timed out waiting for: {what}")
