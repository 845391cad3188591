"""`trivpn connect` without management/status/metrics: SIGHUP and SIGUSR1 restart the
session instead of killing the process (which left DNS changes and kill-switch rules
behind), SIGUSR2 logs the counters. The signals go to this test process (pytest-trio runs
in the main thread), against the rootless `trivpn serve` of tests/helpers/serving.py."""

from __future__ import annotations

import logging
import os
import signal

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import answer_echo, client_profile, running_server, server_config
from helpers.waiting import until

from trivpn import cli
from trivpn.engine import Engine, userspace_tun
from trivpn.profile.profile import parse_profile
from trivpn.session.config import SessionConfig
from trivpn.session.runevents import SessionRetry, SessionUp

BOUND = 30


async def test_sighup_and_sigusr1_restart_the_session_and_sigusr2_logs_counters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trivpn")
    pki = shared_pki()
    ups: list[SessionUp] = []
    retries: list[str] = []
    changed = trio.Event()

    def on_event(ev: object) -> None:
        nonlocal changed
        if isinstance(ev, SessionUp):
            ups.append(ev)
            changed.set()
        elif isinstance(ev, SessionRetry):
            retries.append(ev.reason)

    seen: list[bytes] = []
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki)) as (server, tun), trio.open_nursery() as nursery:
            nursery.start_soon(answer_echo, tun, seen)
            port = server.addresses[0][1]
            engine = Engine(SessionConfig.from_profile(parse_profile(client_profile(pki, port))),
                            userspace_tun(), on_event=on_event, close_device=True)
            await nursery.start(cli.restart_on_signals, engine)
            await nursery.start(engine.run)
            for signum in (signal.SIGHUP, signal.SIGUSR1):
                changed = trio.Event()
                os.kill(os.getpid(), signum)
                await changed.wait()  # the next session came up
            before = len(caplog.records)  # every session's end logs its counters too
            os.kill(os.getpid(), signal.SIGUSR2)
            await until(lambda: any(r.getMessage().startswith("counters: ") for r in caplog.records[before:]),
                        "the counters line of SIGUSR2", 5)
            engine.request_stop("test over")
            nursery.cancel_scope.cancel()
    assert len(ups) == 3 and retries == ["SIGHUP", "SIGUSR1"], retries
    lines = [r.getMessage() for r in caplog.records]
    assert "SIGHUP received, restarting the session" in lines and "SIGUSR1 received, restarting the session" in lines
