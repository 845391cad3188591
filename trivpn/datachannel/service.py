"""The data-channel service: encrypts TUN batches down, decrypts network batches up.

This is the hot path. Each task handles a whole batch per wake-up (one `encrypt`/`decrypt`
call, one channel send), encrypted packets go straight to networkio, and the core keeps no
per-packet Python objects beyond the packets themselves. A third task handles keys,
keepalive pings and the ping-restart deadline.

With a `FastPathIO` (UDP transport + kernel TUN) the two batch tasks are replaced by the
data-plane threads of `datachannel.fastpath`; every use of the core then holds `lock`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import trio

from trivpn.datachannel.core import Compression, DataChannel
from trivpn.datachannel.fastpath import FastPathIO, run_fastpath
from trivpn.errors import FatalError, LocalProtocolError, SessionRestart
from trivpn.messages import InstallKey, SendExitNotify
from trivpn.workers.driver import CoreTimer, hand_over

log = logging.getLogger("trivpn.datachannel")

_COMPRESSION = {
    None: Compression.NONE,
    "lzo-no": Compression.LZO_NO,
    "stub": Compression.STUB,
    "stub-v2": Compression.STUB_V2,
}


class PingRestart(SessionRestart):
    """Nothing authentic came from the server for `ping-restart` seconds."""


class PingExit(FatalError):
    """Nothing authentic came from the server for `ping-exit` seconds: stop for good."""


class DataService:
    def __init__(
        self,
        *,
        from_mux: trio.MemoryReceiveChannel[list[bytes]],
        from_tun: trio.MemoryReceiveChannel[list[bytes]] | None,
        control: trio.MemoryReceiveChannel[list[object]],
        to_tun: trio.MemorySendChannel[list[bytes]] | None,
        to_net: trio.MemorySendChannel[list[bytes]],
        is_server: bool = False,
        fastpath: FastPathIO | None = None,
    ) -> None:
        if fastpath is None and (from_tun is None or to_tun is None):
            raise LocalProtocolError("the TUN channels are needed unless the data-plane threads move packets")
        self.core: DataChannel | None = None
        self._from_mux = from_mux
        self._from_tun = from_tun
        self._control = control
        self._to_tun = to_tun
        self._to_net = to_net
        self._is_server = is_server
        self._timer = CoreTimer()
        self.ping_restart = 0.0
        self.ping_exit = 0.0
        self.dropped_before_key = 0
        self.fastpath = fastpath
        #: the running data-plane threads' shared state (counters), for tests and logs
        self.fastpath_threads: Any = None
        #: Held around every use of the core: the data-plane threads share it (see fastpath).
        self.lock = threading.Lock()

    def _deadline(self) -> float | None:
        core = self.core
        if core is None:
            return None
        t = core.get_timer()
        for limit in (self.ping_restart, self.ping_exit):
            if limit > 0:
                pr = core.last_received + limit
                t = pr if t is None else min(t, pr)
        return t

    async def _on_timer(self) -> None:
        core = self.core
        if core is None:
            return
        now = trio.current_time()
        if self.ping_exit > 0 and now >= core.last_received + self.ping_exit:
            raise PingExit(f"no packet from the server for {self.ping_exit:g} s (ping-exit)")
        if self.ping_restart > 0 and now >= core.last_received + self.ping_restart:
            raise PingRestart(
                f"no packet from the server for {self.ping_restart:g} s (ping-restart)"
            )
        with self.lock:
            core.handle_timer(now)
            pings = core.packets_to_send(now)
        if pings:
            await self._to_net.send(pings)

    async def _up(self) -> None:
        assert self._to_tun is not None
        async with self._from_mux, self._to_tun:
            async for batch in self._from_mux:
                core = self.core
                if core is None:
                    self.dropped_before_key += len(batch)
                    continue
                packets = core.decrypt(batch, trio.current_time())
                if packets:
                    await hand_over(self._to_tun, packets)
                if core.peer_exited:
                    raise SessionRestart("the server is shutting down (it sent an exit notification)")

    async def _down(self) -> None:
        assert self._from_tun is not None
        async with self._from_tun:
            async for batch in self._from_tun:
                core = self.core
                if core is None:
                    self.dropped_before_key += len(batch)
                    continue
                out = core.encrypt(batch, trio.current_time())
                if out:
                    await hand_over(self._to_net, out)

    async def _control_loop(self) -> None:
        async with self._control:
            async for batch in self._control:
                now = trio.current_time()
                for item in batch:
                    if isinstance(item, InstallKey):
                        with self.lock:
                            if self.core is None:
                                core = DataChannel(
                                    cipher=item.cipher,
                                    is_server=self._is_server,
                                    peer_id=item.peer_id,
                                    compression=_COMPRESSION.get(item.compression, Compression.NONE),
                                    ping_interval=item.ping_interval,
                                    auth=item.auth,
                                )
                                self.ping_restart = item.ping_restart
                                self.ping_exit = item.ping_exit
                                core.install_key(item.key_id, item.key2, now)
                                core.last_received = now
                                self.core = core  # published only once keyed
                            else:
                                self.core.install_key(item.key_id, item.key2, now)
                                self.core.last_received = now
                    elif isinstance(item, SendExitNotify) and self.core is not None:
                        with self.lock:
                            exits = [self.core.exit_packet(now) for _ in range(item.count)]
                        await self._to_net.send(exits)
                self._timer.poke()

    async def run(self) -> None:
        async with self._to_net:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._control_loop)
                nursery.start_soon(self._timer.run, self._deadline, self._on_timer)
                if self.fastpath is not None:
                    async with self._from_mux:  # the muxer sends no data packets then
                        await run_fastpath(self, self.fastpath)
                else:
                    nursery.start_soon(self._up)
                    await self._down()
                nursery.cancel_scope.cancel()


__all__ = ["DataService", "PingRestart"]
