"""The server's log names the client when the client goes away: the layers both sides share
word a lost peer as a client sees it, and the server logged `client …@…:55256 ended: the
server closed the TCP connection` for a client that closed its connection, and `ended: no
packet from the server for 8 s (ping-restart)` for one that went silent."""

from __future__ import annotations

import logging

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import answer_echo, client_profile, ping, running_server, server_config
from helpers.waiting import until

from trivpn import api
from trivpn.datachannel.service import PingRestart
from trivpn.networkio.transport import TransportError
from trivpn.profile.profile import parse_profile
from trivpn.server.clientsession import as_server_reason
from trivpn.workers.manager import ServiceFailed, primary_error

BOUND = 30


async def _client_vanishes(proto: str, extra: str, caplog: pytest.LogCaptureFixture) -> str:
    """A client that pings once and is then cancelled (no exit notification): the server's
    `ended:` line for it, once logged."""
    def ended() -> list[str]:
        return [r.getMessage() for r in caplog.records if " ended: " in r.getMessage()]

    pki = shared_pki()
    caplog.set_level(logging.INFO, logger="trivpn")
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki, extra, protos=(proto,))) as (server, tun):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_echo, tun, [])
                profile = parse_profile(client_profile(pki, server.addresses[0][1], proto))
                with trio.CancelScope() as gone:
                    async with api.connect(profile, reconnect=False) as tunnel:
                        await ping(tunnel, "10.8.0.2", "10.8.0.1", 1)
                        gone.cancel()  # the client's process dies: nothing more is sent
                        await trio.sleep_forever()
                await until(lambda: bool(ended()), "the server's 'ended:' line", limit=BOUND)
                nursery.cancel_scope.cancel()
    return ended()[0]


async def test_client_closing_tcp_is_named(caplog: pytest.LogCaptureFixture) -> None:
    line = await _client_vanishes("tcp", "", caplog)
    assert line.endswith("ended: the client closed the TCP connection"), line


async def test_silent_client_is_named(caplog: pytest.LogCaptureFixture) -> None:
    line = await _client_vanishes("udp", "keepalive 1 2", caplog)
    assert "ended: no packet from the client for " in line and line.endswith("s (ping-restart)"), line


def test_rewording_keeps_types_and_other_reasons() -> None:
    ping_restart = PingRestart("no packet from the server for 8 s (ping-restart)")
    group = ExceptionGroup("stack", [ServiceFailed("datachannel", ExceptionGroup("x", [ping_restart]))])
    reworded = primary_error(as_server_reason(group))
    assert type(reworded) is PingRestart and str(reworded) == "no packet from the client for 8 s (ping-restart)"
    assert str(ping_restart) == "no packet from the server for 8 s (ping-restart)"  # the original as it was
    other = ExceptionGroup("stack", [TransportError("TCP receive failed: Connection reset by peer")])
    assert as_server_reason(other) is other
