"""One client-role session: a `SessionStack` plugged into a transport and a TUN.

Why apart from the client: what a session is made of — the muxer with a fresh session id
and the connection's control-channel wrap, the key schedule and its per-key TLS sessions
(credentials, options string, peer-info), the data plane (trio tasks, or the data-plane
threads for UDP over a kernel TUN), and the edge services (networkio, the TUN pump) — is
fixed by the configuration, the candidate and the open transport. The client's loop only
starts it, waits for the tunnel and decides what comes next.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from trivpn.controlchannel.service import control_payload_size
from trivpn.datachannel.coalesce import default_rx_coalesce
from trivpn.datachannel.fastpath import FastPathIO
from trivpn.errors import SessionRestart
from trivpn.messages import AuthPending, SendExit, SendExitNotify, TunnelUp
from trivpn.networkio import Transport, run_networkio
from trivpn.networkio.transport import TCPTransport, UDPTransport
from trivpn.packetmuxer import PacketMuxer
from trivpn.session.config import ConnectionConfig, SessionConfig
from trivpn.session.reconnect import Candidate
from trivpn.session.stack import DATA_CHANNEL_SIZE, SessionStack, TLSPorts, counters_line
from trivpn.tlssession.core import TLSSession
from trivpn.tlssession.keyschedule import KeySchedule, KeyScheduleConfig
from trivpn.tlssession.service import TLSService
from trivpn.tun.base import TunDevice
from trivpn.tun.linux import LinuxTun
from trivpn.tun.service import run_tun
from trivpn.wire import SESSION_ID_LEN
from trivpn.workers.manager import start_named

if TYPE_CHECKING:  # imported when a TCP session makes its data-plane threads (not by UDP runs)
    from trivpn.datachannel.tcpfast import TCPPathIO

__all__ = ["LOW_LATENCY_WARM_FOR", "ClientSession", "client_tls_factory", "tls_session_factory"]

log = logging.getLogger("trivpn")

#: `low_latency`: seconds after the last data packet during which the data-plane threads
#: keep their hot path warm (see datachannel/fastpath.py): covers request/response and
#: typing-speed traffic, and bounds the CPU spent after each burst.
LOW_LATENCY_WARM_FOR = 0.1


def tls_session_factory(
    cfg: SessionConfig,
    proto: str,
    connection: ConnectionConfig | None = None,
    auth_token: Callable[[], str | None] = lambda: None,
) -> Callable[[int, str | None], TLSSession]:
    """The key schedule's per-key-id TLS session maker for the client role.

    `auth_token` returns the token the last session was pushed (kept across reconnects)."""
    options = (connection or cfg.connections[0]).options_string(proto)
    peer_info = cfg.peer_info

    def make(key_id: int, token: str | None) -> TLSSession:
        # every key exchange sends the credentials again; a pushed auth-token replaces
        # the password. Only the first key pulls (the server pushes once per session).
        return TLSSession(
            cfg.tls,
            options_string=options,
            peer_info=peer_info,
            username=cfg.username,
            password=token or auth_token() or cfg.password,
            pull=cfg.pull and key_id == 0,
        )

    return make


def client_tls_factory(
    config: SessionConfig, conn: ConnectionConfig, proto: str, auth_token: Callable[[], str | None]
) -> Callable[[TLSPorts], TLSService]:
    """What a client-role `SessionStack` builds its TLS service with: a fresh key schedule
    (client role, this connection's wrap key) on the channel ends the stack hands over."""
    schedule = KeySchedule(
        KeyScheduleConfig(
            role="client",
            policy=config.cipher_policy(),
            reneg_sec=config.reneg.seconds,
            reneg_bytes=config.reneg.bytes,
            reneg_pkts=config.reneg.packets,
            hand_window=config.hand_window,
            keepalive=config.keepalive,
            wrap_key=conn.wrap.key_bytes,
            pull=config.pull,
        ),
        tls_session_factory(config, proto, conn, auth_token),
    )

    def make_tls(ports: TLSPorts) -> TLSService:
        return TLSService(
            schedule,
            from_cc=ports.from_cc,
            to_cc=ports.to_cc,
            to_data=ports.to_data,
            events=ports.events,
            commands=ports.commands,
            usage=ports.usage,
        )

    return make_tls


def _session_id() -> bytes:
    sid = os.urandom(SESSION_ID_LEN)
    while not any(sid):
        sid = os.urandom(SESSION_ID_LEN)
    return sid


class ClientSession:
    """The client-role stack of one attempt over `transport` (see the module docstring)."""

    def __init__(
        self,
        config: SessionConfig,
        cand: Candidate,
        transport: Transport,
        device: TunDevice | None,
        auth_token: Callable[[], str | None],
    ) -> None:
        self.transport = transport
        self.device = device
        self.endpoint = endpoint = transport.endpoint
        conn = cand.connection
        wrap, wkc = conn.wrap.build(int(time.time()))
        self.muxer = PacketMuxer(wrap, _session_id(), wkc=wkc)
        self._net_up = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        self._net_down = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        self.fast: FastPathIO | TCPPathIO | None = None
        self._tun_up = self._tun_down = None
        if config.data_threads and isinstance(device, LinuxTun) and type(transport) is TCPTransport:
            # the threads own the stream both ways: networkio does not run (see tcpfast.py)
            from trivpn.datachannel.tcpfast import TCPPathIO

            self.fast = TCPPathIO(transport, device, self._net_up[0], self._net_down[1],
                                  rx=default_rx_coalesce(low_latency=config.low_latency))
            log.info("data packets move in data-plane threads (TCP; %s)", _layout(self.fast))
        elif config.data_threads and isinstance(device, LinuxTun) and type(transport) is UDPTransport:
            warm = LOW_LATENCY_WARM_FOR if config.low_latency else 0.0
            self.fast = FastPathIO(transport, device, self._net_up[0], warm_for=warm,
                                   rx=default_rx_coalesce(low_latency=config.low_latency))
            log.info(
                "data packets move in data-plane threads (%s)%s",
                _layout(self.fast), ", low-latency: kept warm after traffic" if warm else "",
            )
        else:
            self._tun_up = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
            self._tun_down = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        payload = control_payload_size(wrap.overhead, ipv6=endpoint.family == socket.AF_INET6)
        if wkc:
            payload -= len(wkc)  # message 1 may carry the WKc too: keep it within one MTU
        self.stack = SessionStack(
            is_server=False,
            muxer=self.muxer,
            make_tls=client_tls_factory(config, conn, cand.remote.proto, auth_token),
            net_up=self._net_up[1],
            net_down=self._net_down[0],
            payload_size=payload,
            tun_up=None if self._tun_up is None else self._tun_up[1],
            tun_down=None if self._tun_down is None else self._tun_down[0],
            fastpath=self.fast,
        )
        assert isinstance(self.stack.tls, TLSService)
        self.tls: TLSService = self.stack.tls
        # the exit notification's own handles on the TLS commands and the data control
        self._commands = self.stack.commands.clone()
        self._data_control = self.stack.data_control.clone()

    def start(self, nursery: trio.Nursery) -> None:
        """Start the edge services (networkio, the TUN pump) and the stack in `nursery`."""
        if isinstance(self.fast, FastPathIO):
            # the data-plane threads read the socket; the session closes it after them
            start_named(
                nursery, "networkio", partial(run_networkio, close_transport=False),
                self.transport, None, self._net_down[1],
            )
        elif self.fast is not None:
            pass  # TCPPathIO: its threads read and write the stream; the session closes it
        else:
            start_named(nursery, "networkio", run_networkio, self.transport, self._net_up[0], self._net_down[1])
            if self.device is not None and self._tun_up is not None and self._tun_down is not None:
                start_named(
                    nursery, "tun", partial(run_tun, self.device, to_data=self._tun_up[0], from_data=self._tun_down[1])
                )
        nursery.start_soon(self.stack.run)  # each layer's failure already names the layer

    async def wait_up(self, deadline: float, window: float) -> TunnelUp:
        """The TunnelUp event, waiting past `deadline` only while the server says AUTH_PENDING."""
        events = self.stack.events
        with trio.move_on_at(deadline) as scope:
            try:
                up = await events.receive()
                while isinstance(up, AuthPending):  # the server needs more time
                    scope.deadline = max(scope.deadline, trio.current_time() + up.timeout)
                    up = await events.receive()
            except trio.EndOfChannel:
                # The TLS layer ended. If it failed, its error cancels us within
                # moments and is the one reported; this is for an unexplained end.
                await trio.sleep(5)
                raise SessionRestart("the TLS session ended before the tunnel came up") from None
        if scope.cancelled_caught:
            raise SessionRestart(
                f"no tunnel from {self.endpoint.describe()} within {window:g} s (no answer, "
                "or the TLS handshake and push did not finish)"
            )
        assert isinstance(up, TunnelUp)
        return up

    async def drain_events(self, on_event: Callable[[Any], None] | None = None) -> None:
        """Log what the TLS service reports after the tunnel is up, until the stack ends
        (and hand each event to `on_event`: the library's renegotiation events)."""
        events = self.stack.events
        async with events:
            async for ev in events:
                log.debug("event %r", ev)
                if on_event is not None:
                    on_event(ev)

    async def exit_notify(self) -> None:
        """Tell the server we are leaving (EXIT with cc-exit, else OCC exit on UDP)."""
        if self.tls.cc_exit:
            await self._commands.send(SendExit())
            await trio.sleep(0.2)  # let the EXIT message leave before we cancel
        elif self.endpoint.proto == "udp":
            await self._data_control.send([SendExitNotify(count=2)])
            await trio.sleep(0.05)

    def counters_line(self) -> str:
        return counters_line(self.muxer, self.stack.data)


def _layout(io: FastPathIO | TCPPathIO) -> str:
    """The data-plane layout, for the log (datachannel/fastpath.py)."""
    if io.split:
        return "one per direction"
    return "one, and a second for bulk input" if io.adaptive else "one"
