"""The OpenVPN client: builds the layer stack from a SessionConfig and runs its sessions.

`trivpn.engine.Engine` runs a Client on a device under a WorkersManager; which remote comes
next and when is decided by `trivpn.session.reconnect.ReconnectPolicy`.

Each session opens a transport, plugs it (through networkio, or the data-plane threads) and
the TUN into a client-role `trivpn.session.stack.SessionStack` — whose docstring is the
channel map, the same in the server role — waits for the tunnel and applies the settings.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Unpack

import trio

from trivpn.controlchannel.service import control_payload_size
from trivpn.datachannel.fastpath import FastPathIO
from trivpn.datachannel.service import DataService
from trivpn.errors import FatalError, SessionRestart
from trivpn.messages import AuthPending, SendExit, SendExitNotify, TLSCommand, TLSToData, TunnelUp
from trivpn.networkio import (
    Endpoint,
    Transport,
    TransportError,
    open_transport,
    resolve,
    run_networkio,
)
from trivpn.networkio.connect import connect_first
from trivpn.networkio.proxy import open_profile_proxy_transport, proxy_of
from trivpn.networkio.transport import ResolveError, UDPTransport, bind_address
from trivpn.packetmuxer import PacketMuxer
from trivpn.profile.profile import Profile
from trivpn.session.config import (
    ANNOUNCED_VERSION,
    DEFAULT_CONNECT_RETRY,
    HAND_WINDOW,
    ConnectionConfig,
    SessionConfig,
    SessionOverrides,
    build_wrap,
    negotiable_ciphers,
    wrap_key_bytes,
)
from trivpn.session.netsettings import TunnelInfo, describe_tunnel, tun_config_from
from trivpn.session.reconnect import (
    Candidate,
    GiveUp,
    ReconnectPolicy,
    SessionEnd,
    backoff_delay,
    candidates,
)
from trivpn.session.stack import CONTROL_CHANNEL_SIZE, DATA_CHANNEL_SIZE, SessionStack, TLSPorts
from trivpn.tlssession.core import TLSSession
from trivpn.tlssession.keyschedule import KeySchedule, KeyScheduleConfig
from trivpn.tlssession.service import AuthTokenExpired, TLSService
from trivpn.tun.linux import LinuxTun
from trivpn.tun.netconfig import NetConfigurator, TunConfig
from trivpn.tun.service import run_tun
from trivpn.workers.manager import WorkersManager, primary_error, start_named

__all__ = [
    "ANNOUNCED_VERSION",
    "CONTROL_CHANNEL_SIZE",
    "DATA_CHANNEL_SIZE",
    "DEFAULT_CONNECT_RETRY",
    "HAND_WINDOW",
    "LOW_LATENCY_WARM_FOR",
    "Candidate",
    "Client",
    "TunnelInfo",
    "backoff_delay",
    "build_wrap",
    "candidates",
    "describe_tunnel",
    "negotiable_ciphers",
    "tun_config_from",
    "wrap_key_bytes",
]

log = logging.getLogger("trivpn")

#: `low_latency`: seconds after the last data packet during which the data-plane threads
#: keep their hot path warm (see datachannel/fastpath.py): covers request/response and
#: typing-speed traffic, and bounds the CPU spent after each burst.
LOW_LATENCY_WARM_FOR = 0.1


@dataclass(slots=True)
class _LiveSession:
    """What the exit hook needs of the session that is running now."""

    tls: TLSService
    endpoint: Endpoint
    commands: trio.MemorySendChannel[TLSCommand]
    data_control: trio.MemorySendChannel[list[TLSToData]]


class Client:
    """One OpenVPN client run: sessions over the profile's remotes, reconnecting between them."""

    def __init__(
        self,
        config: SessionConfig | Profile,
        *,
        device: Any = None,
        ifname: str | None = None,
        configure_tun: bool = False,
        on_tunnel_up: Callable[[TunnelInfo], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
        **overrides: Unpack[SessionOverrides],
    ) -> None:
        """`config` is built once (`SessionConfig.from_profile`); a Profile plus the
        overrides is accepted too and translated here.

        `on_tunnel_up` runs once the keys are in place and before the tunnel is reported
        up: a privileged manager applies the network settings there (see issue 7)."""
        if isinstance(config, Profile):
            config = SessionConfig.from_profile(config, **overrides)
        elif overrides:
            raise TypeError("session overrides apply only when a Profile is given")
        self.config = config
        self.profile = config.profile
        self.device = device
        self.ifname = ifname
        self.configure_tun = configure_tun
        self.on_tunnel_up = on_tunnel_up
        self.info: TunnelInfo | None = None
        self._rng = rng or random.Random()
        self._live: _LiveSession | None = None
        self._came_up = False
        self._auth_token: str | None = None
        self._configurator: NetConfigurator | None = None
        self._applied: TunConfig | None = None
        self._manager: WorkersManager | None = None

    def _make_session_factory(
        self, proto: str, connection: ConnectionConfig | None = None
    ) -> Callable[[int, str | None], TLSSession]:
        cfg = self.config
        options = (connection or cfg.connections[0]).options_string(proto)
        peer_info = cfg.peer_info

        def make(key_id: int, auth_token: str | None) -> TLSSession:
            # every key exchange sends the credentials again; a pushed auth-token replaces
            # the password. Only the first key pulls (the server pushes once per session).
            return TLSSession(
                cfg.tls,
                options_string=options,
                peer_info=peer_info,
                username=cfg.username,
                password=auth_token or self._auth_token or cfg.password,
                pull=cfg.pull and key_id == 0,
            )

        return make

    async def _open(self, cand: Candidate, attempt: int, connect_timeout: float) -> Transport:
        """Resolve the remote and open one transport to it (no retry: the caller loops)."""
        remote = cand.remote
        proto = remote.proto
        if self.config.family is not None:  # -4 / -6 on the command line override the profile
            proto = proto.rstrip("46") + str(self.config.family)
        def report(msg: str) -> None:
            log.warning("%s", msg)

        if proxy_of(cand.profile) is not None:
            # the proxy resolves the server's name: it may only exist on the proxy's side
            return await open_profile_proxy_transport(
                cand.profile,
                remote.host,
                remote.port,
                proto,
                connect_timeout=connect_timeout,
                report=report,
            )
        log.info("resolving %s", remote.host)
        endpoints = await resolve(remote.host, remote.port, proto)

        profile = cand.profile

        def bind(ep: Endpoint) -> tuple[str, int] | None:
            # bind only when asked (local/lport/bind) and never with nobind; unlike OpenVPN
            # we do not grab port 1194 by default, so several clients can run side by side
            if profile.nobind or not profile.bind:
                return None
            return bind_address(ep, profile.local, profile.lport)

        if endpoints[0].proto == "tcp":
            for ep in endpoints:
                log.info("connecting to %s", ep.describe())
            return await connect_first(endpoints, connect_timeout=connect_timeout, report=report, bind=bind)
        # UDP: one address per attempt, rotating through all of them
        ep = endpoints[attempt % len(endpoints)]
        log.info("connecting to %s", ep.describe())
        return await open_transport(ep, report=report, bind_to=bind(ep))

    async def exit_notify(self) -> None:
        """Tell the server we are leaving (EXIT with cc-exit, else OCC exit on UDP)."""
        sess = self._live
        if sess is None or self.info is None:
            return
        if sess.tls.cc_exit:
            await sess.commands.send(SendExit())
            await trio.sleep(0.2)  # let the EXIT message leave before we cancel
        elif sess.endpoint.proto == "udp":
            await sess.data_control.send([SendExitNotify(count=2)])
            await trio.sleep(0.05)

    async def run(
        self, manager: WorkersManager, *, task_status: trio.TaskStatus[TunnelInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, keep the tunnel up, and reconnect (with backoff) when a session ends.

        The TUN device outlives sessions (persist-tun): applications see a pause, not a dead
        interface; each session moves its packets (TUN service or data-plane threads). Each
        session runs every layer in a nursery of its own; a `SessionRestart` ending it leads
        to the next attempt, anything else ends the run.
        """
        manager.add_exit_hook(self.exit_notify)
        self._manager = manager
        policy = ReconnectPolicy.for_config(self.config, self._rng, trio.current_time())
        step = policy.first()
        status: trio.TaskStatus[TunnelInfo] | None = task_status
        while True:
            came_up = False
            err: SessionRestart | None = None
            try:
                came_up = await self._session(step.candidate, step.attempt, status)
            except BaseException as exc:
                primary = primary_error(exc)
                if isinstance(primary, trio.Cancelled) or not isinstance(primary, SessionRestart):
                    raise
                err = primary
                came_up = self._came_up
                if isinstance(err, AuthTokenExpired):
                    self._auth_token = None
            if came_up:
                status = None
            end = SessionEnd(came_up) if err is None else SessionEnd(
                came_up, str(err), failed=True, advance=err.advance, unresolved=isinstance(err, ResolveError)
            )
            decision = policy.ended(end, trio.current_time())
            if isinstance(decision, GiveUp):
                if decision.reraise and err is not None:
                    raise err from None
                raise FatalError(decision.message) from None
            log.warning("%s; reconnecting in %.1f s", decision.reason, decision.delay)
            await trio.sleep(decision.delay)
            step = decision

    async def _session(
        self, cand: Candidate, attempt: int, task_status: trio.TaskStatus[TunnelInfo] | None
    ) -> bool:
        """One session: every layer in its own nursery, until something ends it."""
        self._came_up = False
        conn = cand.connection
        window = conn.connect_window
        deadline = trio.current_time() + window
        with trio.move_on_at(deadline) as connect_scope:
            transport = await self._open(cand, attempt, window)
        if connect_scope.cancelled_caught:
            raise TransportError(f"no connection to {cand.remote.host} within {window:g} s")
        endpoint = transport.endpoint
        wrap, wkc = conn.wrap.build(int(time.time()))
        sid = os.urandom(8)
        while not any(sid):
            sid = os.urandom(8)
        muxer = PacketMuxer(wrap, sid, wkc=wkc)

        net_up_s, net_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        net_down_s, net_down_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        fast: FastPathIO | None = None
        tun_up_s = tun_up_r = tun_down_s = tun_down_r = None
        if self.config.data_threads and isinstance(self.device, LinuxTun) and type(transport) is UDPTransport:
            warm = LOW_LATENCY_WARM_FOR if self.config.low_latency else 0.0
            fast = FastPathIO(transport, self.device, net_up_s, warm_for=warm)
            log.info(
                "data packets move in two data-plane threads%s",
                " (low-latency: kept warm after traffic)" if warm else "",
            )
        else:
            tun_up_s, tun_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
            tun_down_s, tun_down_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)

        schedule = KeySchedule(
            KeyScheduleConfig(
                role="client",
                policy=self.config.cipher_policy(),
                reneg_sec=self.config.reneg.seconds,
                reneg_bytes=self.config.reneg.bytes,
                reneg_pkts=self.config.reneg.packets,
                hand_window=self.config.hand_window,
                keepalive=self.config.keepalive,
                wrap_key=conn.wrap.key_bytes,
                pull=self.config.pull,
            ),
            self._make_session_factory(cand.remote.proto, conn),
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

        payload = control_payload_size(wrap.overhead, ipv6=endpoint.family == socket.AF_INET6)
        if wkc:
            payload -= len(wkc)  # message 1 may carry the WKc too: keep it within one MTU
        stack = SessionStack(
            is_server=False,
            muxer=muxer,
            make_tls=make_tls,
            net_up=net_up_r,
            net_down=net_down_s,
            payload_size=payload,
            tun_up=tun_up_r,
            tun_down=tun_down_s,
            fastpath=fast,
        )
        tls = stack.tls
        assert isinstance(tls, TLSService)
        data = stack.data
        events_r = stack.events
        live = _LiveSession(tls, endpoint, stack.commands.clone(), stack.data_control.clone())
        try:
            async with trio.open_nursery() as nursery:

                def start(name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
                    start_named(nursery, name, fn, *args)

                if fast is not None:
                    # the data-plane threads read the socket; the session closes it after them
                    start("networkio", partial(run_networkio, close_transport=False), transport, None, net_down_r)
                else:
                    start("networkio", run_networkio, transport, net_up_s, net_down_r)
                    if self.device is not None and tun_up_s is not None and tun_down_r is not None:
                        start("tun", partial(run_tun, self.device, to_data=tun_up_s, from_data=tun_down_r))
                nursery.start_soon(stack.run)  # each layer's failure already names the layer
                self._live = live

                with trio.move_on_at(deadline) as scope:
                    try:
                        up = await events_r.receive()
                        while isinstance(up, AuthPending):  # the server needs more time
                            scope.deadline = max(scope.deadline, trio.current_time() + up.timeout)
                            up = await events_r.receive()
                    except trio.EndOfChannel:
                        # The TLS layer ended. If it failed, its error cancels us within
                        # moments and is the one reported; this is for an unexplained end.
                        await trio.sleep(5)
                        raise SessionRestart("the TLS session ended before the tunnel came up") from None
                if scope.cancelled_caught:
                    raise SessionRestart(
                        f"no tunnel from {endpoint.describe()} within {window:g} s (no answer, "
                        "or the TLS handshake and push did not finish)"
                    )
                assert isinstance(up, TunnelUp)
                info = TunnelInfo(
                    up.settings, up.cipher, up.key_derivation, up.peer_subject, up.tls_version,
                    endpoint.describe(), ifname=self.ifname,
                )
                info.tun_config = tun_config_from(up.settings, endpoint.address)
                self._apply_tun(info.tun_config)
                if self.on_tunnel_up is not None:
                    await self.on_tunnel_up(info)
                self.info = info
                self._came_up = True
                if up.settings.auth_token:  # reused on renegotiation and on reconnect
                    self._auth_token = up.settings.auth_token
                log.info("%s", describe_tunnel(info))
                if task_status is not None:
                    task_status.started(info)
                async with events_r:
                    async for ev in events_r:
                        log.debug("event %r", ev)
        finally:
            self._live = None
            transport.close()
            log.info("%s", self.counters_line(muxer, data))
        return self._came_up

    def _apply_tun(self, cfg: TunConfig) -> None:
        """Configure the TUN the first time; on a reconnect only if the settings changed."""
        if not (self.configure_tun and self.ifname):
            return
        if self._configurator is not None:
            if self._applied == cfg:
                return
            log.info("the server pushed different settings; reconfiguring %s", self.ifname)
            self._configurator.undo()
        else:
            self._configurator = NetConfigurator(self.ifname)
            assert self._manager is not None
            self._manager.add_cleanup(self._configurator.undo)
        self._configurator.apply(cfg)
        self._applied = cfg

    @staticmethod
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
