"""The metrics endpoint bounds the time a scraper may take to read its answer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio
import trio.testing

from trivpn.observe.figures import SessionFigures
from trivpn.observe.metrics import SEND_SECONDS, Metrics, _handle


class _NoFigures:
    is_server = True
    on_handshake: Callable[[float], None] = staticmethod(lambda seconds: None)

    def all_figures(self) -> Sequence[SessionFigures]:
        return []


async def test_a_scraper_that_never_reads_the_answer_is_dropped_after_5_s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A scraper sends its request, then reads nothing: the answer's `send_all` gives up
    after SEND_SECONDS (5 s) and the connection is closed (its file descriptor freed), one
    timeout counted. Before, `send_all` waited for ever."""
    metrics = Metrics(_NoFigures())
    ours, theirs = trio.testing.lockstep_stream_pair()  # send_all waits for the reader
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(theirs.send_all, b"GET /metrics HTTP/1.1\r\n\r\n")
        with trio.move_on_after(3600) as forever:
            await _handle(metrics, ours)
    assert not forever.cancelled_caught
    assert trio.current_time() - start == SEND_SECONDS == 5.0
    assert metrics.send_timeouts == 1
