"""The data-channel service: keys, keepalive and exit notifications; a data plane moves packets.

The session stack chooses the data plane (`plane.TaskPlane`: trio tasks; `fastpath.ThreadPlane`:
two threads) and the service runs it next to two tasks of its own: one installs and retires
keys and turns exit requests into requests to the plane, one runs the keepalive core's timer
(pings are requested from the plane's sending side, which alone seals; ping-restart and
ping-exit end the session from here).

Time: every `now` — in the planes' threads, the cores and the keepalive timer — comes from one
injected clock (`time.monotonic` by default); the threads must not read trio's clock. Only the
sleep itself is trio's: a deadline `d` on the injected clock is slept towards as
`trio.current_time() + (d - clock())`, re-read whenever it fires early, so keepalive and
ping-restart deadlines mean the same instants the data plane stamped. (With a trio MockClock
in a test, inject `trio.current_time` and use the trio plane: then both are the same clock.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from trivpn.datachannel.core import DataChannel, DataStats
from trivpn.datachannel.fastpath import FastPathIO
from trivpn.datachannel.framing import Compression
from trivpn.datachannel.keepalive import PeerSilent
from trivpn.datachannel.link import DataLink
from trivpn.datachannel.plane import DataPlane, make_plane
from trivpn.errors import FatalError, LocalProtocolError, SessionRestart
from trivpn.messages import (
    ActivateKey,
    InstallKey,
    KeyUsage,
    RetireKey,
    SendExitNotify,
    TLSToData,
)
from trivpn.workers.driver import CoreTimer

if TYPE_CHECKING:  # imported by whoever makes one (TCP sessions only)
    from trivpn.datachannel.tcpfast import TCPPathIO

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
    """One session's data channel: keys, keepalive and exit notifications around a data plane."""

    def __init__(
        self,
        *,
        control: trio.MemoryReceiveChannel[list[TLSToData]],
        plane: DataPlane | None = None,
        from_mux: trio.MemoryReceiveChannel[list[bytes]] | None = None,
        from_tun: trio.MemoryReceiveChannel[list[bytes]] | None = None,
        to_tun: trio.MemorySendChannel[list[bytes]] | None = None,
        to_net: trio.MemorySendChannel[list[bytes]] | None = None,
        is_server: bool = False,
        fastpath: FastPathIO | TCPPathIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Give `plane`, or the channels (and `fastpath`) to build one with `make_plane`."""
        if plane is None:
            if from_mux is None or to_net is None:
                raise LocalProtocolError("a data plane, or the channels to build one, is needed")
            plane = make_plane(
                from_mux=from_mux,
                from_tun=from_tun,
                to_tun=to_tun,
                to_net=to_net,
                fastpath=fastpath,
            )
        self.plane = plane
        self.link = DataLink(clock)
        #: both directions and the keepalive core, published once keyed
        self.core: DataChannel | None = None
        self._control = control
        self._is_server = is_server
        self._clock = clock
        self._timer = CoreTimer()

    @property
    def dropped_before_key(self) -> int:
        return self.link.dropped_up + self.link.dropped_down

    def stats(self) -> DataStats | None:
        """A snapshot of both directions' counters (None before the first key)."""
        return None if self.core is None else self.core.stats

    def usage(self) -> KeyUsage:
        """What the primary key carried so far (polled by the key schedule)."""
        return KeyUsage(None) if self.core is None else self.core.usage()

    def _deadline(self) -> float | None:
        core = self.core
        if core is None:
            return None
        core.keepalive.observe(last_sent=core.tx.last_sent, last_received=core.rx.last_received)
        due = core.keepalive.get_timer()
        return None if due is None else trio.current_time() + (due - self._clock())

    async def _on_timer(self) -> None:
        core = self.core
        if core is None:
            return
        keepalive = core.keepalive
        keepalive.observe(last_sent=core.tx.last_sent, last_received=core.rx.last_received)
        keepalive.handle_timer(self._clock())
        for event in keepalive.events():
            if isinstance(event, PeerSilent):
                what = "ping-exit" if event.fatal else "ping-restart"
                error = PingExit if event.fatal else PingRestart
                raise error(f"no packet from the server for {event.limit:g} s ({what})")
            self._request(pings=1)

    def _request(self, *, pings: int = 0, exits: int = 0) -> None:
        link = self.link
        link.pings_wanted += pings
        link.exits_wanted += exits
        link.requests += 1  # after the counts: the sender reads them once it sees this
        self.plane.kick()

    def _install(self, item: InstallKey, now: float) -> None:
        core = self.core
        if core is None:
            core = DataChannel(
                cipher=item.cipher,
                is_server=self._is_server,
                peer_id=item.peer_id,
                compression=_COMPRESSION.get(item.compression, Compression.NONE),
                ping_interval=item.ping_interval,
                ping_restart=item.ping_restart,
                ping_exit=item.ping_exit,
                auth=item.auth,
            )
            core.install_key(item.key_id, item.key2, now)  # the first key always sends
            self.link.rx = core.rx  # published only once keyed
            self.link.tx = core.tx
            self.core = core
        else:
            # an atomic table swap, no lock
            core.install_key(item.key_id, item.key2, now, send_now=item.send_now)

    async def _control_loop(self) -> None:
        async with self._control:
            async for batch in self._control:
                now = self._clock()
                for item in batch:
                    if isinstance(item, InstallKey):
                        self._install(item, now)
                    elif isinstance(item, ActivateKey) and self.core is not None:
                        self.core.activate_key(item.key_id)
                    elif isinstance(item, RetireKey) and self.core is not None:
                        self.core.retire_key(item.key_id)
                    elif isinstance(item, SendExitNotify) and self.core is not None:
                        self._request(exits=item.count)
                self._timer.poke()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._control_loop)
            nursery.start_soon(self._timer.run, self._deadline, self._on_timer)
            await self.plane.run(self.link)
            nursery.cancel_scope.cancel()


__all__ = ["DataService", "PingExit", "PingRestart"]
