"""Helpers for the reverse-tunnel tests that run a relay and expose in-process on loopback."""

from __future__ import annotations

import socket

import trio

from trivpn.reverse.expose import Expose, ExposeConfig
from trivpn.reverse.relay import Relay, RelayConfig
from trivpn.reverse.session import SessionConfig

HOST = "127.0.0.1"


def free_port() -> int:
    """A port the kernel says is free now (the start of a relay's public range)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return min(port, 65535 - 50)


async def start_one_port_tunnel(
    nursery: trio.Nursery, service_port: int, session: SessionConfig, token: bytes
) -> tuple[Relay, Expose, int]:
    """A relay with one public port and an expose in front of `service_port`, bound (within
    a bounded wait): (relay, expose, the public port)."""
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    public = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    relay = Relay(
        RelayConfig(
            host=HOST, port=0, start_port=public, end_port=public, tokens={"a": token},
            observe_http=False, session=session,
        )
    )
    tport = await nursery.start(relay.serve)
    expose = Expose(ExposeConfig(HOST, tport, HOST, service_port, token, observe_http=False, session=session))
    nursery.start_soon(expose.run)
    for _ in range(200):  # bounded: the tunnel binds within a few round trips
        if relay.by_owner:
            break
        await trio.sleep(0.05)
    assert relay.by_owner
    return relay, expose, public
