"""`--public-host` that names no address of this machine: refused at start in one line,
and a public port that fails to bind later is logged on the relay (once per cause).
Nothing is sent to 192.0.2.1 (TEST-NET-1): binding to it fails locally."""

from __future__ import annotations

import logging
import secrets

import pytest
import trio
from helpers.reverse import HOST, free_port

from trivpn.errors import ConfigError
from trivpn.reverse import events as E
from trivpn.reverse.relay import Relay, RelayConfig
from trivpn.reverse.session import Session, SessionConfig

ELSEWHERE = "192.0.2.1"  # not on this host
TOKEN = b"0123456789abcdef-token"


async def login(port: int) -> int:
    """A client authenticates and binds; its public port (0: the bind was refused)."""
    session = Session(
        "client", trio.current_time(), SessionConfig(), token=TOKEN, client_id=secrets.token_bytes(16)
    )
    async with await trio.open_tcp_stream(HOST, port) as stream:
        with trio.move_on_after(5):
            for _ in range(20):  # bounded: a handshake is a few round trips
                out = b"".join(session.data_to_send(trio.current_time()))
                if out:
                    await stream.send_all(out)
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return 0
                if not data:
                    return 0
                session.receive_data(data, trio.current_time())
                for ev in session.events():
                    if isinstance(ev, E.Bound):
                        return ev.port
    return 0


def _relay(public_host: str | None) -> Relay:
    start = free_port()
    return Relay(
        RelayConfig(
            host=HOST,
            port=0,
            start_port=start,
            end_port=start + 9,
            tokens={"alice": TOKEN},
            public_host=public_host,
        )
    )


async def test_public_host_that_cannot_be_bound_is_refused_at_start() -> None:
    relay = _relay(ELSEWHERE)
    with trio.move_on_after(5) as scope, pytest.raises(ConfigError) as err:
        await relay.serve()  # before: it started, and every bind failed later
    assert not scope.cancelled_caught
    assert str(err.value).startswith(f"--public-host {ELSEWHERE}: cannot bind ports:")
    assert "\n" not in str(err.value)


async def test_failed_public_binds_are_logged_once_per_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """5 clients whose public port cannot be bound: each gets BIND_ERR, the relay logs
    one WARNING naming the cause (before: nothing at all)."""
    caplog.set_level(logging.INFO, logger="trivpn.reverse")
    relay = _relay(None)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(relay.serve)
            relay.config.public_host = ELSEWHERE  # as if the address went away
            ports = [await login(port) for _ in range(5)]
            nursery.cancel_scope.cancel()
    assert ports == [0] * 5
    lines = [r for r in caplog.records if "cannot bind public port" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING  # figure: 5 failures, 1 line
    assert ELSEWHERE in lines[0].getMessage()
