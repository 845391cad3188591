"""Data planes: what moves data packets between the network and the TUN for one session.

The data-channel service (`datachannel.service.DataService`) keeps keys and keepalive; a
*data plane* moves the packets. The session stack picks one and hands it to the service:

* `TaskPlane` (here): two trio tasks, up (muxer's data list → decrypt → TUN channel) and
  down (TUN channel → encrypt → networkio's input). Works with every transport and TUN.
* `fastpath.ThreadPlane`: two plain threads over a UDP socket and a kernel TUN fd.
* `tcpfast.TCPThreadPlane`: two plain threads over a TCP stream and a kernel TUN fd.

Both implement `DataPlane`. They share a `DataLink` with the service: the direction objects
(`tx`, `rx`: published once, at the first key), the requests for pings and exit
notifications, the clock, and the per-direction drop counters. Every attribute of the link
has exactly one writer: the service writes what it publishes and requests; the sending side
writes what it sealed and dropped; the receiving side what it dropped. The down side is the
only one that seals, pings and OCC EXIT included, so packet ids never need a lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import trio

from trivpn.datachannel.fastpath import FastPathIO, ThreadPlane
from trivpn.datachannel.link import PEER_EXITED, DataLink
from trivpn.errors import LocalProtocolError, SessionRestart
from trivpn.workers.driver import hand_over

if TYPE_CHECKING:  # imported by whoever makes a TCPPathIO: UDP runs never load the TCP plane
    from trivpn.datachannel.tcpfast import TCPPathIO


class DataPlane(Protocol):
    """Moves one session's data packets; chosen by the session stack, run by the service."""

    async def run(self, link: DataLink) -> None:
        """Move packets until cancelled, a failure, or the end of input (then return).

        Whatever runs outside trio stops before this returns, and its failure is raised here.
        """
        ...

    def kick(self) -> None:
        """The service raised `link.requests`: seal them soon. Trio thread; never blocks."""
        ...


class TaskPlane:
    """The data plane as trio tasks; everything runs in the trio thread."""

    def __init__(
        self,
        *,
        from_mux: trio.MemoryReceiveChannel[list[bytes]],
        from_tun: trio.MemoryReceiveChannel[list[bytes]],
        to_tun: trio.MemorySendChannel[list[bytes]],
        to_net: trio.MemorySendChannel[list[bytes]],
    ) -> None:
        self._from_mux = from_mux
        self._from_tun = from_tun
        self._to_tun = to_tun
        self._to_net = to_net
        self._kicked = trio.Event()

    def kick(self) -> None:
        self._kicked.set()

    async def run(self, link: DataLink) -> None:
        async with self._to_net:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._up, link)
                nursery.start_soon(self._requests, link)
                await self._down(link)
                nursery.cancel_scope.cancel()

    async def _up(self, link: DataLink) -> None:
        async with self._from_mux, self._to_tun:
            async for batch in self._from_mux:
                rx = link.rx_or_drop(len(batch))
                if rx is None:
                    continue
                packets = rx.decrypt(batch, link.clock())
                if packets:
                    await hand_over(self._to_tun, packets)
                if rx.peer_exited:
                    raise SessionRestart(PEER_EXITED)

    async def _down(self, link: DataLink) -> None:
        async with self._from_tun:
            async for batch in self._from_tun:
                tx = link.tx_or_drop(len(batch))
                if tx is None:
                    continue
                out = tx.encrypt(batch, link.clock())
                if out:
                    await hand_over(self._to_net, out)

    async def _requests(self, link: DataLink) -> None:
        """Seal requested pings / exits. Another task than `_down`, but the same thread, and
        `Encryptor` calls never await: a batch and a ping can never interleave."""
        while True:
            await self._kicked.wait()
            self._kicked = trio.Event()
            tx = link.tx
            if tx is not None:
                out = link.requested_packets(tx, link.clock())
                if out:
                    await self._to_net.send(out)


def make_plane(
    *,
    from_mux: trio.MemoryReceiveChannel[list[bytes]],
    from_tun: trio.MemoryReceiveChannel[list[bytes]] | None,
    to_tun: trio.MemorySendChannel[list[bytes]] | None,
    to_net: trio.MemorySendChannel[list[bytes]],
    fastpath: FastPathIO | TCPPathIO | None = None,
) -> DataPlane:
    """The threads when the caller has a `FastPathIO` (UDP) or `TCPPathIO` (TCP) for
    them, otherwise the trio tasks."""
    if isinstance(fastpath, FastPathIO):
        return ThreadPlane(fastpath, from_mux=from_mux, to_net=to_net)
    if fastpath is not None:
        from trivpn.datachannel.tcpfast import TCPThreadPlane

        return TCPThreadPlane(fastpath, from_mux=from_mux, to_net=to_net)
    if from_tun is None or to_tun is None:
        raise LocalProtocolError(
            "the TUN channels are needed unless the data-plane threads move packets"
        )
    return TaskPlane(from_mux=from_mux, from_tun=from_tun, to_tun=to_tun, to_net=to_net)


__all__ = ["DataLink", "DataPlane", "TaskPlane", "make_plane"]
