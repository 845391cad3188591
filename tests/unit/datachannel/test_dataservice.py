"""The data-channel service with the trio-task data plane, on memory channels.

The service's clock is injected as `trio.current_time`, so trio's MockClock (autojump) drives
keepalive, ping-restart and ping-exit without real waiting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing

from trivpn.datachannel.core import DataChannel
from trivpn.datachannel.plane import TaskPlane
from trivpn.datachannel.service import DataService, PingExit, PingRestart
from trivpn.errors import FatalError, LocalProtocolError, SessionRestart
from trivpn.messages import InstallKey, KeyUsage, RetireKey, SendExitNotify, TLSToData
from trivpn.workers.manager import primary_error

KEY2 = [bytes((i * 17 + k) & 0xFF for i in range(256)) for k in range(3)]
CIPHER = "AES-256-GCM"


@dataclass
class Ends:
    service: DataService
    peer: DataChannel  # the server side, driven by the test
    control: trio.MemorySendChannel[list[TLSToData]]
    from_net: trio.MemorySendChannel[list[bytes]]  # what the muxer would hand up
    from_app: trio.MemorySendChannel[list[bytes]]  # what the TUN would hand down
    to_app: trio.MemoryReceiveChannel[list[bytes]]
    to_net: trio.MemoryReceiveChannel[list[bytes]]

    async def install(
        self,
        key_id: int = 0,
        ping_interval: float = 0.0,
        ping_restart: float = 0.0,
        ping_exit: float = 0.0,
    ) -> None:
        self.peer.install_key(key_id, KEY2[key_id], trio.current_time())
        item = InstallKey(
            key_id, KEY2[key_id], CIPHER, 1, None, ping_interval, ping_restart, ping_exit
        )
        await self.control.send([item])
        await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def running() -> AsyncIterator[Ends]:
    control_s, control_r = trio.open_memory_channel[list[TLSToData]](4)
    mux_s, mux_r = trio.open_memory_channel[list[bytes]](4)
    tun_up_s, tun_up_r = trio.open_memory_channel[list[bytes]](4)
    tun_down_s, tun_down_r = trio.open_memory_channel[list[bytes]](4)
    net_s, net_r = trio.open_memory_channel[list[bytes]](4)
    plane = TaskPlane(from_mux=mux_r, from_tun=tun_up_r, to_tun=tun_down_s, to_net=net_s)
    service = DataService(control=control_r, plane=plane, clock=trio.current_time)
    peer = DataChannel(cipher=CIPHER, is_server=True, peer_id=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        yield Ends(service, peer, control_s, mux_s, tun_up_s, tun_down_r, net_r)
        nursery.cancel_scope.cancel()


def _ip(n: int, size: int = 50) -> bytes:
    return b"\x45" + n.to_bytes(2, "big") + bytes(size - 3)


async def test_packets_before_the_first_key_are_counted_then_both_ways_flow() -> None:
    async with running() as ends:
        await ends.from_app.send([_ip(1)])
        await ends.from_net.send([b"\x48" + bytes(40)])
        await trio.testing.wait_all_tasks_blocked()
        assert ends.service.dropped_before_key == 2
        assert ends.service.stats() is None and ends.service.usage() == KeyUsage(None)
        await ends.install()
        await ends.from_app.send([_ip(2), _ip(3)])
        assert ends.peer.decrypt(await ends.to_net.receive(), 0.0) == [_ip(2), _ip(3)]
        await ends.from_net.send(ends.peer.encrypt([_ip(4)], 0.0))
        assert await ends.to_app.receive() == [_ip(4)]
        stats = ends.service.stats()
        assert stats is not None and (stats.tx_packets, stats.rx_packets) == (2, 1)
        assert ends.service.usage() == KeyUsage(0, bytes=150, packets=3)


async def test_retire_key_ends_the_lame_duck_and_usage_follows_the_primary() -> None:
    async with running() as ends:
        await ends.install(0)
        await ends.from_app.send([_ip(1)])
        await ends.to_net.receive()
        late = ends.peer.encrypt([_ip(2)], 0.0)  # sealed with key 0 before the peer switched
        await ends.install(1)
        assert ends.service.usage() == KeyUsage(1)
        await ends.from_net.send(late)
        assert await ends.to_app.receive() == [_ip(2)]  # the lame duck still opens it
        assert ends.service.usage() == KeyUsage(1)  # ... but it is not the primary's traffic
        await ends.control.send([RetireKey(1)])  # stale (that is the primary): ignored
        await ends.control.send([RetireKey(0)])
        await trio.testing.wait_all_tasks_blocked()
        core = ends.service.core
        assert core is not None and (core.primary_key_id, core.lame_duck_key_id) == (1, None)
        ends.peer.install_key(0, KEY2[0], 0.0)  # only to seal one more key-0 packet
        await ends.from_net.send(ends.peer.encrypt([_ip(3)], 0.0))
        await trio.testing.wait_all_tasks_blocked()
        stats = ends.service.stats()
        assert stats is not None and stats.drop_no_key == 1


async def test_keepalive_pings_then_ping_restart(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(BaseException) as info:  # noqa: PT011 - checked below
        async with running() as ends:
            await ends.install(ping_interval=10.0, ping_restart=60.0)
            start = trio.current_time()
            times: list[float] = []
            with trio.fail_after(100):
                for _ in range(3):
                    wire = await ends.to_net.receive()
                    assert ends.peer.decrypt(wire, 0.0) == []
                    times.append(trio.current_time() - start)
            assert times == [10.0, 20.0, 30.0]
            assert ends.peer.stats.rx_pings == 3
            await ends.from_net.send(ends.peer.encrypt([_ip(1)], 0.0))  # heard at t=30
            assert await ends.to_app.receive() == [_ip(1)]
            with trio.fail_after(1000):
                while True:
                    await ends.to_net.receive()  # pings go on until the restart
    err = primary_error(info.value)
    assert isinstance(err, PingRestart) and isinstance(err, SessionRestart)
    assert "60 s (ping-restart)" in str(err)
    assert trio.current_time() == pytest.approx(90.0)  # 60 s after the last packet


async def test_ping_exit_is_fatal(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(BaseException) as info:  # noqa: PT011 - checked below
        async with running() as ends:
            await ends.install(ping_restart=60.0, ping_exit=30.0)
            with trio.fail_after(1000):
                await trio.sleep_forever()
    err = primary_error(info.value)
    assert isinstance(err, PingExit) and isinstance(err, FatalError)
    assert trio.current_time() == pytest.approx(30.0)


async def test_exit_notifications_and_peer_exit() -> None:
    with pytest.raises(BaseException) as info:  # noqa: PT011 - checked below
        async with running() as ends:
            await ends.control.send([SendExitNotify(count=2)])  # no key yet: nothing to send
            await ends.install()
            await ends.control.send([SendExitNotify(count=2)])
            exits = await ends.to_net.receive()
            assert len(exits) == 2 and ends.peer.decrypt(exits, 0.0) == []
            assert ends.peer.peer_exited and ends.peer.stats.rx_occ == 2
            assert ends.service.link.exits_sealed == 2
            await ends.from_net.send([ends.peer.exit_packet(0.0)])
            with trio.fail_after(10):
                await trio.sleep_forever()
    err = primary_error(info.value)
    assert isinstance(err, SessionRestart) and "exit notification" in str(err)


async def test_service_needs_a_plane_or_its_channels() -> None:
    control_s, control_r = trio.open_memory_channel[list[TLSToData]](1)
    with pytest.raises(LocalProtocolError, match="data plane"):
        DataService(control=control_r)
    mux_s, mux_r = trio.open_memory_channel[list[bytes]](1)
    net_s, net_r = trio.open_memory_channel[list[bytes]](1)
    with pytest.raises(LocalProtocolError, match="TUN channels"):
        DataService(control=control_r, from_mux=mux_r, to_net=net_s)
