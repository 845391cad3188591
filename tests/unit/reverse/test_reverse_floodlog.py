"""A flood of public connections over `max_streams` writes one INFO line and then a count
per interval, not one line per refused connection (over loopback, a real relay and
expose)."""

from __future__ import annotations

import functools
import logging
import re
import socket

import pytest
import trio
from helpers.reverse import HOST, free_port

from trivpn.reverse import relay as relay_mod
from trivpn.reverse.config import SessionConfig
from trivpn.reverse.expose import Expose, ExposeConfig
from trivpn.reverse.relay import Relay, RelayConfig

TOKEN = b"0123456789abcdef-token"
STREAMS = 10
FLOOD = 200


async def _hold(stream: trio.SocketStream) -> None:
    """A local service that accepts and keeps the connection open."""
    async with stream:
        await trio.sleep_forever()


async def test_refused_public_connections_are_logged_rate_limited(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 public connections against max_streams 10: 190 refused, reported in at most 3
    lines whose figures add up to 190 (before: 190 lines)."""
    monkeypatch.setattr(relay_mod, "LOG_INTERVAL", 1.0, raising=False)
    caplog.set_level(logging.INFO, logger="trivpn.reverse")
    start = free_port()
    relay = Relay(
        RelayConfig(
            host=HOST,
            port=0,
            start_port=start,
            end_port=start + 1,
            tokens={"alice": TOKEN},
            session=SessionConfig(max_streams=STREAMS),
        )
    )
    socks: list[socket.socket] = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, _hold, 0, host=HOST))
            local = listeners[0].socket.getsockname()[1]
            tport = await nursery.start(relay.serve)
            public: list[int] = []
            bound = trio.Event()

            def on_bound(host: str, port: int) -> None:
                public.append(port)
                bound.set()

            nursery.start_soon(Expose(ExposeConfig(HOST, tport, HOST, local, TOKEN), on_bound).run)
            await bound.wait()
            for _ in range(FLOOD):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex((HOST, public[0]))
                socks.append(s)

            def lines() -> list[str]:
                return [
                    r.getMessage()
                    for r in caplog.records
                    if "refusing public connection" in r.getMessage()
                    or "more public connections refused" in r.getMessage()
                ]

            def reported() -> int:
                n = 0
                for line in lines():
                    m = re.search(r"(\d+) more public connections refused", line)
                    n += int(m.group(1)) if m else 1
                return n

            for _ in range(1000):  # bounded, and by fail_after
                if reported() >= FLOOD - STREAMS:
                    break
                await trio.sleep(0.01)
            assert relay.metrics_groups()["alice"][0].streams_active == STREAMS
            assert reported() == FLOOD - STREAMS  # figure: all 190 refusals accounted for
            assert len(lines()) <= 3  # figure: in at most 3 lines (before: 190)
            nursery.cancel_scope.cancel()
    for s in socks:
        s.close()
