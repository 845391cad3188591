"""One session's layer stack, the same for the client and the server role.

Channel map (every channel is bounded; control-plane items are lists of typed messages from
`trivpn.messages`, data-plane items are `list[bytes]`). The caller owns the ends drawn at the
edges: the network pair (a socket through networkio, the data-plane threads, or an in-memory
link) and the TUN pair (a TUN service, or nothing when the data-plane threads move packets):

    net_up ─────────▶ packetmuxer ──mux_data──▶ datachannel ──tun_down─▶ (TUN)
    net_down ◀─────── packetmuxer               datachannel ◀─tun_up──── (TUN)
    net_down ◀─(clone)──────────────────────────datachannel
    packetmuxer ──mux_ctrl──▶ reliable ──rel_up──▶ controlchannel ──cc_up──▶ tls
    packetmuxer ◀─rel_down─── reliable ◀─cc_down── controlchannel ◀─tls_down─ tls
    tls ──keys──▶ datachannel        (InstallKey, ActivateKey, RetireKey; data_control: SendExitNotify)
    tls ◀─usage── datachannel        (KeyUsage, read about once a second: reneg-bytes/-pkts)
    tls ──events──▶ owner            (TunnelUp / ClientReady, AuthPending)
    owner ──commands──▶ tls          (Renegotiate, SendExit)

Data packets cross at most three hops each way and never enter the reliable layer; down,
the data channel writes to the network directly. The role changes only the muxer (who
sends the first reset), the reliable layer's key-0 start, the data channel's direction and
what the TLS service does with the handshake; the wiring is identical, which is what lets
an in-memory client stack talk to an in-memory server stack (`trivpn.testing.twoended`).

Why the TLS service comes from a factory: its inputs (the key schedule's configuration:
client profile and credentials, or a server's push options) differ per role; the stack only
hands it its channel ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from trivpn.controlchannel.service import run_controlchannel
from trivpn.datachannel.fastpath import FastPathIO
from trivpn.datachannel.service import DataService
from trivpn.messages import (
    ControlToReliable,
    ControlToTLS,
    KeyUsage,
    MuxToReliable,
    ReliableToControl,
    ReliableToMux,
    TLSCommand,
    TLSToControl,
    TLSToData,
)
from trivpn.packetmuxer import PacketMuxer, run_packetmuxer
from trivpn.records import dataclass
from trivpn.reliabletransport.service import ReliableService
from trivpn.workers.manager import start_named

if TYPE_CHECKING:  # the TCP data plane is imported by whoever makes one (start-up time of UDP runs)
    from trivpn.datachannel.tcpfast import TCPPathIO

__all__ = ["CONTROL_CHANNEL_SIZE", "DATA_CHANNEL_SIZE", "Runnable", "SessionStack", "TLSPorts", "counters_line"]

CONTROL_CHANNEL_SIZE = 64
#: Data-plane channels carry batches of up to 64 packets; 8 in flight per hop is ample and
#: bounds the memory a burst can pin (32 let RSS grow by several MB under load).
DATA_CHANNEL_SIZE = 8


class Runnable(Protocol):
    """A service object the stack runs (its `run` returns when the service is done)."""

    async def run(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TLSPorts:
    """The channel ends the TLS service runs on (see the channel map)."""

    from_cc: trio.MemoryReceiveChannel[Any]
    to_cc: trio.MemorySendChannel[Any]
    to_data: trio.MemorySendChannel[Any]
    events: trio.MemorySendChannel[Any]  # TunnelUp / ClientReady / AuthPending, one per send
    commands: trio.MemoryReceiveChannel[TLSCommand]
    #: what the data channel's primary key has carried so far (polled by the TLS service)
    usage: Callable[[], KeyUsage]


class SessionStack:
    """The channels and services of one session; `run` runs them in one nursery."""

    def __init__(
        self,
        *,
        is_server: bool,
        muxer: PacketMuxer,
        make_tls: Callable[[TLSPorts], Runnable],
        net_up: trio.MemoryReceiveChannel[list[bytes]],
        net_down: trio.MemorySendChannel[list[bytes]],
        payload_size: int,
        tun_up: trio.MemoryReceiveChannel[list[bytes]] | None = None,
        tun_down: trio.MemorySendChannel[list[bytes]] | None = None,
        fastpath: FastPathIO | TCPPathIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`tun_up`/`tun_down` carry IP packets from/to the TUN; leave them out only with
        `fastpath` (the data-plane threads then move data packets themselves).
        `payload_size` is the TLS bytes per control packet (`control_payload_size`).
        `clock` is the data plane's clock (`trio.current_time` under a MockClock, with the
        trio-task plane only: threads must not read trio's clock)."""
        if muxer.is_server != is_server:
            raise ValueError("the muxer's role differs from the stack's")
        self.is_server = is_server
        self.muxer = muxer
        self._net_up = net_up
        self._net_down = net_down
        self._payload_size = payload_size
        n = CONTROL_CHANNEL_SIZE
        self._mux_data = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        self._mux_ctrl = trio.open_memory_channel[list[MuxToReliable]](n)
        self._rel_down = trio.open_memory_channel[list[ReliableToMux]](n)
        self._rel_up = trio.open_memory_channel[list[ReliableToControl]](n)
        self._cc_down = trio.open_memory_channel[list[ControlToReliable]](n)
        self._cc_up = trio.open_memory_channel[list[ControlToTLS]](n)
        self._tls_down = trio.open_memory_channel[list[TLSToControl]](n)
        keys_s, keys_r = trio.open_memory_channel[list[TLSToData]](n)
        events_s, events_r = trio.open_memory_channel[Any](n)
        cmd_s, cmd_r = trio.open_memory_channel[TLSCommand](n)
        #: what the TLS service reports (TunnelUp / ClientReady, AuthPending): the owner reads it
        self.events: trio.MemoryReceiveChannel[Any] = events_r
        #: commands to the TLS service (Renegotiate, SendExit): clone it to keep a handle
        self.commands: trio.MemorySendChannel[TLSCommand] = cmd_s
        #: the data channel's control input (SendExitNotify); clone it to keep a handle
        self.data_control: trio.MemorySendChannel[list[TLSToData]] = keys_s
        self.reliable = ReliableService(
            from_mux=self._mux_ctrl[1],
            to_mux=self._rel_down[0],
            to_cc=self._rel_up[0],
            from_cc=self._cc_down[1],
            is_server=is_server,
        )
        self.data = DataService(
            from_mux=self._mux_data[1],
            from_tun=tun_up,
            control=keys_r,
            to_tun=tun_down,
            to_net=net_down.clone(),
            is_server=is_server,
            fastpath=fastpath,
            clock=clock,
        )
        self.tls = make_tls(TLSPorts(self._cc_up[1], self._tls_down[0], keys_s, events_s, cmd_r, self.data.usage))

    async def _muxer(self) -> None:
        await run_packetmuxer(
            self.muxer,
            net_up=self._net_up,
            net_down=self._net_down,
            data_up=self._mux_data[0],
            ctrl_up=self._mux_ctrl[0],
            ctrl_down=self._rel_down[1],
        )

    async def _controlchannel(self) -> None:
        await run_controlchannel(
            from_rel=self._rel_up[1],
            to_rel=self._cc_down[0],
            to_tls=self._cc_up[0],
            from_tls=self._tls_down[1],
            payload_size=self._payload_size,
        )

    async def run(self) -> None:
        """Run every layer until one fails or the stack is cancelled (a failure is raised
        as `ServiceFailed` naming the layer, and cancels the rest)."""
        async with trio.open_nursery() as nursery:
            start_named(nursery, "packetmuxer", self._muxer)
            start_named(nursery, "reliabletransport", self.reliable.run)
            start_named(nursery, "controlchannel", self._controlchannel)
            start_named(nursery, "tlssession", self.tls.run)
            start_named(nursery, "datachannel", self.data.run)


def counters_line(muxer: PacketMuxer, data: DataService) -> str:
    """One line of traffic and drop counters (every dropped packet is counted somewhere)."""
    m = muxer.stats
    parts = [
        f"control in {m.control_in}",
        f"dropped control: {m.drop_unauthentic} unauthentic, {m.drop_malformed} malformed, "
        f"{m.drop_session} wrong session, {m.drop_early} early",
    ]
    d = data.stats()
    if d is not None:
        parts.insert(0, f"data in {d.rx_packets} out {d.tx_packets} packets")
        parts.append(
            f"dropped data: {d.drop_auth} unauthentic, {d.drop_replay} replayed, "
            f"{d.drop_malformed} malformed, {d.drop_no_key} unknown key, "
            f"{d.drop_compression} bad framing"
        )
    return "counters: " + "; ".join(parts)
