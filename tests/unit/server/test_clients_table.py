"""ClientTable: however one client's task ends, only that client ends.

The case pinned here: the server is cancelled while a session is ending on its own (an EXIT
being processed), so the session's nursery raises a group holding both trio.Cancelled and
the session's error. Only the cancellation may leave the client's task; before the fix the
session error escaped too and the server's shutdown ended in a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import trio
import trio.lowlevel
import trio.testing

from trivpn.errors import SessionRestart
from trivpn.server.clients import ClientTable, Listening


@dataclass
class _Demux:
    removed: list[int] = field(default_factory=list)

    def remove_session(self, session: int) -> None:
        self.removed.append(session)


@dataclass
class _Hub:
    clients: dict[int, Any] = field(default_factory=dict)
    observer: Any = None


@dataclass
class _EndingClient:
    """A session whose layers fail with SessionRestart when they are cancelled."""

    session: int = 7
    key: int = 70
    addr: tuple[str, int] = ("127.0.0.1", 1194)
    peer_id: int = 0
    cleaned: bool = False

    async def run(self, io: Any) -> None:
        async def exits_on_cancel() -> None:
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                raise SessionRestart("the client closed the session (EXIT)") from None

        async with trio.open_nursery() as nursery:
            nursery.start_soon(exits_on_cancel)
            nursery.start_soon(trio.sleep_forever)

    def cleanup(self, now: float) -> None:
        self.cleaned = True

    async def finish(self) -> None:
        """What the table awaits when the task ends: the cleanup, then the scripts."""
        self.cleanup(0.0)


async def test_cancelled_while_a_session_ends_lets_only_the_cancellation_out() -> None:
    demux = _Demux()
    table = ClientTable(cast(Any, _Hub()))
    sock = Listening(demux=cast(Any, demux))
    client = _EndingClient()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(table.run)
            table.start(sock, cast(Any, client), trio.lowlevel.checkpoint)
            await trio.testing.wait_all_tasks_blocked()
            assert list(table.clients) == [client.key]
            scope.cancel()
    assert scope.cancelled_caught
    assert client.cleaned and demux.removed == [client.session]
    assert table.clients == {} and sock.sessions == {}
