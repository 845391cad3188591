"""Opening a transport when a name has several addresses.

UDP has no connection to test, so its addresses are tried one per session attempt (the
client rotates through them). TCP uses "happy eyeballs": start with the first address in
resolver order, and start the next one whenever the previous attempt failed or has not
succeeded within a short stagger; the first connection up wins and the others are
cancelled and closed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from trivpn.networkio.transport import Endpoint, Reporter, Transport, TransportError, open_transport

#: Delay before racing the next address (RFC 8305 recommends 250 ms).
HAPPY_EYEBALLS_DELAY = 0.25


async def connect_first(
    endpoints: Sequence[Endpoint],
    *,
    connect_timeout: float = 10.0,
    stagger: float = HAPPY_EYEBALLS_DELAY,
    report: Reporter | None = None,
    bind: Callable[[Endpoint], tuple[str, int] | None] | None = None,
) -> Transport:
    """The first endpoint that accepts a connection, raced with a stagger between starts."""
    if not endpoints:
        raise TransportError("no address to connect to")
    winner: Transport | None = None
    errors: list[str] = []

    async with trio.open_nursery() as nursery:

        async def attempt(ep: Endpoint, failed: trio.Event) -> None:
            nonlocal winner
            try:
                transport = await open_transport(
                    ep,
                    connect_timeout=connect_timeout,
                    report=report,
                    bind_to=bind(ep) if bind is not None else None,
                )
            except TransportError as exc:
                errors.append(str(exc))
                if report is not None:
                    report(str(exc))
                failed.set()
                return
            if winner is None:
                winner = transport
                nursery.cancel_scope.cancel()
            else:
                transport.close()

        for ep in endpoints:
            failed = trio.Event()
            nursery.start_soon(attempt, ep, failed)
            with trio.move_on_after(stagger):
                await failed.wait()
    if winner is None:
        raise TransportError("; ".join(errors) or "no address answered")
    return winner
