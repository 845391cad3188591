"""TLSService: a client service and a server service joined by memory channels (trio)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from helpers.keyschedule_pair import (
    CLIENT_SID,
    SERVER_SID,
    client_config,
    client_factory,
    client_peer_info,
    server_config,
    server_factory,
)

from trivpn.errors import FatalError, SessionRestart
from trivpn.messages import (
    ClientReady,
    DynamicWrapKey,
    InstallKey,
    KeyUsage,
    Renegotiate,
    ResetComplete,
    SendExit,
    TLSCommand,
    TunnelUp,
)
from trivpn.tlssession.control import Fatal, Restart
from trivpn.tlssession.keyschedule import KeySchedule
from trivpn.tlssession.service import AuthTokenExpired, TLSService
from trivpn.workers.manager import primary_error


class End:
    """One service with the far ends of its channels."""

    def __init__(self, schedule: KeySchedule, usage: Any = None) -> None:
        self.up_s, up_r = trio.open_memory_channel[list[object]](16)
        down_s, self.down_r = trio.open_memory_channel[list[Any]](16)
        data_s, self.data_r = trio.open_memory_channel[list[object]](16)
        ev_s, self.events_r = trio.open_memory_channel[object](16)
        self.cmd_s, cmd_r = trio.open_memory_channel[TLSCommand](16)
        self.service = TLSService(
            schedule, from_cc=up_r, to_cc=down_s, to_data=data_s, events=ev_s, commands=cmd_r, usage=usage
        )

    async def keys(self) -> InstallKey:
        (key,) = await self.data_r.receive()
        assert isinstance(key, InstallKey)
        return key


async def _relay(src: trio.MemoryReceiveChannel[list[Any]], dst: trio.MemorySendChannel[list[object]]) -> None:
    async for batch in src:
        items = [i for i in batch if not isinstance(i, DynamicWrapKey)]  # the muxer's business
        if items:
            await dst.send(items)


async def test_services_connect_renegotiate_and_exit(autojump_clock: trio.testing.MockClock) -> None:
    client = End(KeySchedule(client_config(), client_factory(client_peer_info())))
    wrap = {"near": False}
    server_ks = KeySchedule(server_config(), server_factory())
    server = End(server_ks, usage=lambda: KeyUsage(server_ks.primary, 0, 0, wrap["near"]))
    with pytest.raises(BaseExceptionGroup) as info:
        async with trio.open_nursery() as nursery:
            for end in (client, server):
                nursery.start_soon(end.service.run)
            nursery.start_soon(_relay, client.down_r, server.up_s)
            nursery.start_soon(_relay, server.down_r, client.up_s)
            await client.up_s.send([ResetComplete(CLIENT_SID, SERVER_SID)])
            await server.up_s.send([ResetComplete(SERVER_SID, CLIENT_SID)])
            assert isinstance(await client.events_r.receive(), TunnelUp)
            assert isinstance(await server.events_r.receive(), ClientReady)
            assert (await client.keys()).key2 == (await server.keys()).key2
            assert client.service.cc_exit
            await client.cmd_s.send(Renegotiate("test"))  # a command from the session
            k1c, k1s = await client.keys(), await server.keys()
            assert k1c.key_id == k1s.key_id == 1 and k1c.key2 == k1s.key2
            wrap["near"] = True  # the server's data channel nears packet-id wrap
            k2s, k2c = await server.keys(), await client.keys()
            assert k2c.key_id == k2s.key_id == 2 and client.service.renegotiations == 2
            wrap["near"] = False
            await client.cmd_s.send(SendExit())  # the server's service ends with SessionRestart
    err = primary_error(info.value)
    assert isinstance(err, SessionRestart) and "EXIT" in str(err)


@pytest.mark.parametrize(
    ("event", "error", "advance"),
    [
        (Restart("r", advance=True), SessionRestart, True),
        (Restart("r", auth_token_expired=True), AuthTokenExpired, False),
        (Fatal("f"), FatalError, False),
    ],
)
async def test_terminal_events_become_exceptions(event: Restart | Fatal, error: type[Exception], advance: bool) -> None:
    end = End(KeySchedule(client_config(), client_factory(client_peer_info())))
    end.service.schedule._events.append(event)
    with pytest.raises(error) as info:
        await end.service._dispatch()
    if isinstance(info.value, SessionRestart):
        assert info.value.advance is advance
