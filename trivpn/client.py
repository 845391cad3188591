"""The OpenVPN client: builds the layer stack from a profile and runs it under the manager.

Channel map (every channel is bounded; control-plane items are lists of typed messages from
`trivpn.messages`, data-plane items are `list[bytes]`):

    tun ──tun_up──▶ datachannel ──net_down (clone)──────────────────────────▶ networkio
    tun ◀─tun_down─ datachannel ◀──mux_data── packetmuxer ◀──net_up────────── networkio
                                              packetmuxer ──net_down────────▶ networkio
    reliable ◀─mux_ctrl── packetmuxer ◀─rel_down── reliable
    controlchannel ◀─rel_up── reliable ◀─cc_down── controlchannel
    tlssession ◀─cc_up── controlchannel ◀─tls_down── tlssession
    tlssession ──keys──▶ datachannel;  tlssession ──events──▶ client;  client ──commands──▶ tlssession

Data packets cross three hops each way at most and never enter the reliable layer.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from trivpn import __version__
from trivpn.controlchannel.service import control_payload_size, run_controlchannel
from trivpn.controlchannel.wrap import ControlWrap, NoWrap, StaticKey, TLSAuth, TLSCrypt
from trivpn.datachannel.crypto import SUPPORTED_AEAD, normalize_cipher_name
from trivpn.datachannel.service import DataService
from trivpn.errors import ConfigError, FatalError
from trivpn.messages import SendExitNotify, TunnelUp
from trivpn.networkio import (
    Endpoint,
    Transport,
    TransportError,
    open_transport,
    resolve,
    run_networkio,
)
from trivpn.packetmuxer import PacketMuxer, run_packetmuxer
from trivpn.profile.profile import Profile
from trivpn.profile.push import PushedSettings
from trivpn.reliabletransport.service import ReliableService
from trivpn.tlssession.core import TLSSession
from trivpn.tlssession.keymethod import (
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    occ_options_string,
    peer_info_string,
)
from trivpn.tlssession.service import CipherPolicy, TLSService
from trivpn.tlssession.tls import TLSConfig
from trivpn.tun.netconfig import NetConfigurator, TunConfig
from trivpn.tun.service import run_tun
from trivpn.workers.manager import WorkersManager

log = logging.getLogger("trivpn")

#: OpenVPN's hand-window: the whole TLS + push exchange must finish within this.
HAND_WINDOW = 60.0
CONTROL_CHANNEL_SIZE = 64
DATA_CHANNEL_SIZE = 32
#: The version we announce; servers compare IV_VER against OpenVPN releases.
ANNOUNCED_VERSION = "2.6.14"


@dataclass(slots=True)
class TunnelInfo:
    """What `connect` returns once the tunnel is up."""

    settings: PushedSettings
    cipher: str
    key_derivation: str
    peer_subject: str
    tls_version: str
    remote: str
    ifname: str | None = None
    tun_config: TunConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_wrap(profile: Profile, now_unix: int) -> ControlWrap:
    if profile.tls_crypt:
        return TLSCrypt(StaticKey.from_text(profile.tls_crypt), server=False, timestamp=now_unix)
    if profile.tls_auth:
        return TLSAuth(
            StaticKey.from_text(profile.tls_auth),
            profile.key_direction,
            profile.auth or "SHA1",
            timestamp=now_unix,
        )
    return NoWrap()


def negotiable_ciphers(profile: Profile) -> list[str]:
    out: list[str] = []
    for name in profile.data_ciphers:
        try:
            n = normalize_cipher_name(name)
        except ConfigError:
            log.warning("data-ciphers: %s is not supported and is not offered to the server", name)
            continue
        if n not in out:
            out.append(n)
    if not out:
        raise ConfigError(
            f"none of data-ciphers ({':'.join(profile.data_ciphers)}) is supported; "
            f"use one of {', '.join(SUPPORTED_AEAD)}"
        )
    return out


def tun_config_from(settings: PushedSettings, server_address: str) -> TunConfig:
    """Translate pushed options into what the TUN layer applies."""
    cfg = TunConfig(mtu=settings.tun_mtu or 1500)
    if settings.ifconfig_local:
        other = settings.ifconfig_remote_or_mask
        if settings.topology == "subnet":
            if not other:
                raise FatalError("pushed 'ifconfig' lacks a netmask for topology subnet")
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{other}").prefixlen
            cfg.ipv4 = (settings.ifconfig_local, prefix, None)
        else:
            cfg.ipv4 = (settings.ifconfig_local, 32, other)
    if settings.ifconfig_ipv6_local:
        iface = ipaddress.IPv6Interface(settings.ifconfig_ipv6_local)
        cfg.ipv6 = (str(iface.ip), iface.network.prefixlen)
    for r in settings.routes:
        network = r.network
        if network == "vpn_gateway" and settings.route_gateway:
            network = settings.route_gateway
        if r.gateway == "net_gateway" or network in ("net_gateway", "remote_host", "vpn_gateway"):
            log.warning("route %s %s %s is not supported; skipped", r.network, r.netmask, r.gateway or "")
            continue
        net = ipaddress.IPv4Network(f"{network}/{r.netmask}", strict=False)
        cfg.routes.append((str(net), None, r.metric))
    for r6 in settings.routes_ipv6:
        net6 = ipaddress.IPv6Network(r6.network, strict=False)
        cfg.routes6.append((str(net6), None, r6.metric))
    if settings.redirect_gateway is not None:
        if "def1" not in settings.redirect_gateway:
            log.warning("redirect-gateway without def1 is applied as def1 (never replaces the default route)")
        if "!ipv4" not in settings.redirect_gateway:
            cfg.redirect_gateway = True
    cfg.redirect_gateway6 = bool(settings.redirect_gateway_ipv6)
    if cfg.redirect_gateway or cfg.redirect_gateway6:
        cfg.server_addresses = [server_address]
    return cfg


def describe_tunnel(info: TunnelInfo) -> str:
    cfg = info.tun_config
    parts = []
    if cfg is not None:
        if cfg.ipv4:
            a, p, peer = cfg.ipv4
            parts.append(f"{a}/{p}" + (f" peer {peer}" if peer else ""))
        if cfg.ipv6:
            parts.append(f"{cfg.ipv6[0]}/{cfg.ipv6[1]}")
        routes = [r[0] for r in cfg.routes + cfg.routes6]
        if cfg.redirect_gateway:
            routes.append("0.0.0.0/1+128.0.0.0/1")
        if cfg.redirect_gateway6:
            routes.append("::/1+8000::/1")
        if routes:
            parts.append("routes " + ", ".join(routes))
    where = f" on {info.ifname}" if info.ifname else ""
    return (
        f"tunnel up{where}: {'; '.join(parts) or 'no addresses'}; "
        f"cipher {info.cipher} ({info.key_derivation})"
    )


class Client:
    """One OpenVPN client session over one remote."""

    def __init__(
        self,
        profile: Profile,
        *,
        device: Any = None,
        ifname: str | None = None,
        configure_tun: bool = False,
        key_derivation: str = "auto",
        username: str = "",
        password: str = "",
        hand_window: float = HAND_WINDOW,
        on_tunnel_up: Callable[[TunnelInfo], Awaitable[None]] | None = None,
    ) -> None:
        """`on_tunnel_up` runs once the keys are in place and before the tunnel is reported
        up: a privileged manager applies the network settings there (see issue 7)."""
        if key_derivation not in ("auto", "ekm", "prf"):
            raise ConfigError(f"key derivation must be auto, ekm or prf, not {key_derivation!r}")
        self.profile = profile
        self.device = device
        self.ifname = ifname
        self.configure_tun = configure_tun
        self.key_derivation = key_derivation
        self.username = username
        self.password = password
        self.hand_window = hand_window
        self.on_tunnel_up = on_tunnel_up
        self.info: TunnelInfo | None = None
        self.endpoint: Endpoint | None = None
        self.ciphers = negotiable_ciphers(profile)
        self.tls_config = TLSConfig(
            ca_pem=profile.ca or "",
            cert_pem=profile.cert,
            key_pem=profile.key,
            is_server=False,
            remote_cert_tls=profile.remote_cert_tls,
            verify_x509_name=profile.verify_x509_name,
            tls_version_min=(profile.tls_version_min or "1.2"),
        )
        if not profile.ca:
            raise ConfigError("the profile has no 'ca': the server could not be verified")
        self._tls: TLSService | None = None
        self._data_control: trio.MemorySendChannel[list[object]] | None = None
        self._commands: trio.MemorySendChannel[str] | None = None

    def _iv_proto(self) -> int:
        bits = IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | IV_PROTO_CC_EXIT_NOTIFY
        if self.key_derivation != "prf":
            bits |= IV_PROTO_TLS_KEY_EXPORT
        return bits

    def _make_session_factory(self, proto: str) -> Callable[[int, str | None], TLSSession]:
        p = self.profile
        options = occ_options_string(
            proto=proto,
            tls_client=True,
            tls_auth=bool(p.tls_auth),
            key_direction=p.key_direction if p.tls_auth else None,
        )
        peer_info = peer_info_string(
            version=ANNOUNCED_VERSION,
            platform="linux",
            ciphers=self.ciphers,
            iv_proto=self._iv_proto(),
            extra={
                "IV_NCP": "2",
                "IV_LZO_STUB": "1",
                "IV_COMP_STUB": "1",
                "IV_COMP_STUBv2": "1",
                "IV_GUI_VER": f"trivpn_{__version__}",
            },
        )

        def make(key_id: int, auth_token: str | None) -> TLSSession:
            # every key exchange sends the credentials again; a pushed auth-token replaces
            # the password. Only the first key pulls (the server pushes once per session).
            return TLSSession(
                self.tls_config,
                options_string=options,
                peer_info=peer_info,
                username=self.username,
                password=auth_token or self.password,
                pull=p.pull and key_id == 0,
            )

        return make

    async def _connect(self, deadline: float) -> Transport:
        """Resolve the remote and open the transport, retrying transient failures.

        Every address of the name is tried in resolver order; a refused or unreachable TCP
        connect is reported and retried with backoff (1 s doubling, 8 s cap) until the
        hand-window deadline. UDP needs no connect: its retries are the reset's.
        """
        remote = self.profile.remotes[0]
        delay = 1.0
        while True:
            log.info("resolving %s", remote.host)
            try:
                endpoints = await resolve(remote.host, remote.port, remote.proto)
            except TransportError as exc:
                if trio.current_time() + delay >= deadline:
                    raise FatalError(str(exc)) from None
                log.warning("%s; retrying in %g s", exc, delay)
            else:
                for endpoint in endpoints:
                    log.info("connecting to %s", endpoint.describe())
                    try:
                        transport = await open_transport(
                            endpoint, report=lambda m: log.warning("%s", m)
                        )
                    except TransportError as exc:
                        log.warning("%s", exc)
                        continue
                    self.endpoint = endpoint
                    return transport
                if trio.current_time() + delay >= deadline:
                    raise FatalError(
                        f"could not connect to {remote.host} port {remote.port} ({remote.proto})"
                    )
                log.warning("no address of %s answered; retrying in %g s", remote.host, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 8.0)

    async def exit_notify(self) -> None:
        """Tell the server we are leaving (EXIT with cc-exit, else OCC exit on UDP)."""
        if self.info is None or self.endpoint is None or self._tls is None:
            return
        if self._tls.cc_exit and self._commands is not None:
            await self._commands.send("exit")
            await trio.sleep(0.2)  # let the EXIT message leave before we cancel
        elif self.endpoint.proto == "udp" and self._data_control is not None:
            await self._data_control.send([SendExitNotify(count=2)])
            await trio.sleep(0.05)

    async def run(
        self, manager: WorkersManager, *, task_status: trio.TaskStatus[TunnelInfo] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every layer under `manager`, wait for the tunnel, then keep it running."""
        deadline = trio.current_time() + self.hand_window
        transport = await self._connect(deadline)
        endpoint = transport.endpoint
        manager.add_cleanup(transport.close)
        wrap = build_wrap(self.profile, int(time.time()))
        sid = os.urandom(8)
        while not any(sid):
            sid = os.urandom(8)
        muxer = PacketMuxer(wrap, sid)

        def chan(size: int) -> tuple[Any, Any]:
            return trio.open_memory_channel(size)

        net_up_s, net_up_r = chan(DATA_CHANNEL_SIZE)
        net_down_s, net_down_r = chan(DATA_CHANNEL_SIZE)
        mux_data_s, mux_data_r = chan(DATA_CHANNEL_SIZE)
        mux_ctrl_s, mux_ctrl_r = chan(CONTROL_CHANNEL_SIZE)
        rel_down_s, rel_down_r = chan(CONTROL_CHANNEL_SIZE)
        rel_up_s, rel_up_r = chan(CONTROL_CHANNEL_SIZE)
        cc_down_s, cc_down_r = chan(CONTROL_CHANNEL_SIZE)
        cc_up_s, cc_up_r = chan(CONTROL_CHANNEL_SIZE)
        tls_down_s, tls_down_r = chan(CONTROL_CHANNEL_SIZE)
        keys_s, keys_r = chan(CONTROL_CHANNEL_SIZE)
        events_s, events_r = chan(CONTROL_CHANNEL_SIZE)
        cmd_s, cmd_r = chan(CONTROL_CHANNEL_SIZE)
        tun_up_s, tun_up_r = chan(DATA_CHANNEL_SIZE)
        tun_down_s, tun_down_r = chan(DATA_CHANNEL_SIZE)

        self._data_control = keys_s.clone()
        self._commands = cmd_s
        tls = TLSService(
            make_session=self._make_session_factory(self.profile.remotes[0].proto),
            policy=CipherPolicy(self.ciphers, self.profile.data_ciphers_fallback or self.profile.cipher, self.key_derivation),
            from_cc=cc_up_r,
            to_cc=tls_down_s,
            to_data=keys_s,
            events=events_s,
            commands=cmd_r,
            reneg_sec=float(self.profile.reneg_sec if self.profile.reneg_sec is not None else 3600),
            hand_window=self.hand_window,
        )
        self._tls = tls
        data = DataService(
            from_mux=mux_data_r,
            from_tun=tun_up_r,
            control=keys_r,
            to_tun=tun_down_s,
            to_net=net_down_s.clone(),
        )
        reliable = ReliableService(from_mux=mux_ctrl_r, to_mux=rel_down_s, to_cc=rel_up_s, from_cc=cc_down_r)
        payload = control_payload_size(wrap.overhead, ipv6=endpoint.family == socket.AF_INET6)

        manager.start_service("networkio", run_networkio, transport, net_up_s, net_down_r)
        manager.start_service(
            "packetmuxer",
            lambda: run_packetmuxer(
                muxer,
                net_up=net_up_r,
                net_down=net_down_s,
                data_up=mux_data_s,
                ctrl_up=mux_ctrl_s,
                ctrl_down=rel_down_r,
            ),
        )
        manager.start_service("reliabletransport", reliable.run)
        manager.start_service(
            "controlchannel",
            lambda: run_controlchannel(
                from_rel=rel_up_r, to_rel=cc_down_s, to_tls=cc_up_s, from_tls=tls_down_r, payload_size=payload
            ),
        )
        manager.start_service("tlssession", tls.run)
        manager.start_service("datachannel", data.run)
        if self.device is not None:
            manager.start_service(
                "tun", lambda: run_tun(self.device, to_data=tun_up_s, from_data=tun_down_r)
            )
        manager.add_exit_hook(self.exit_notify)
        if self.profile.reneg_bytes or self.profile.reneg_pkts:
            manager.start_service("reneg-watch", self._watch_volume, data, cmd_s.clone())

        with trio.move_on_at(deadline) as scope:
            try:
                up = await events_r.receive()
            except trio.EndOfChannel:
                # The TLS layer ended. If it failed, its error cancels us within moments and
                # is the one reported; the line below is only for an unexplained end.
                await trio.sleep(5)
                raise FatalError("the TLS session ended before the tunnel came up") from None
        if scope.cancelled_caught:
            raise FatalError(
                f"no tunnel within {self.hand_window:g} s: the server did not complete the TLS "
                f"handshake and push (check the remote, the tls-auth/tls-crypt key and the firewall)"
            )
        assert isinstance(up, TunnelUp)
        info = TunnelInfo(
            up.settings, up.cipher, up.key_derivation, up.peer_subject, up.tls_version,
            endpoint.describe(), ifname=self.ifname,
        )
        info.tun_config = tun_config_from(up.settings, endpoint.address)
        if self.configure_tun and self.ifname:
            configurator = NetConfigurator(self.ifname)
            manager.add_cleanup(configurator.undo)
            configurator.apply(info.tun_config)
        if self.on_tunnel_up is not None:
            await self.on_tunnel_up(info)
        self.info = info
        log.info("%s", describe_tunnel(info))
        task_status.started(info)
        try:
            async with events_r:
                async for ev in events_r:
                    log.debug("event %r", ev)
        finally:
            log.info("%s", self.counters_line(muxer, data))

    async def _watch_volume(self, data: DataService, commands: trio.MemorySendChannel[str]) -> None:
        """Ask for new keys after `reneg-bytes` / `reneg-pkts` (or near packet-id wrap).

        Reads the data core's counters once a second instead of testing them per packet, so
        the hot path carries no renegotiation logic at all.
        """
        limit_bytes = self.profile.reneg_bytes or 0
        limit_pkts = self.profile.reneg_pkts or 0
        base_bytes = base_pkts = 0
        key: int | None = None
        async with commands:
            while True:
                await trio.sleep(1)
                core = data.core
                if core is None:
                    continue
                st = core.stats
                moved_bytes = st.tx_bytes + st.rx_bytes
                moved_pkts = st.tx_packets + st.rx_packets
                if core.primary_key_id != key:
                    key, base_bytes, base_pkts = core.primary_key_id, moved_bytes, moved_pkts
                    continue
                if limit_bytes and moved_bytes - base_bytes >= limit_bytes:
                    reason = f"reneg-bytes {limit_bytes}"
                elif limit_pkts and moved_pkts - base_pkts >= limit_pkts:
                    reason = f"reneg-pkts {limit_pkts}"
                elif core.needs_renegotiation:
                    reason = "packet ids near wrap"
                else:
                    continue
                await commands.send(f"renegotiate:{reason}")
                base_bytes, base_pkts = moved_bytes, moved_pkts

    @staticmethod
    def counters_line(muxer: PacketMuxer, data: DataService) -> str:
        """One line of traffic and drop counters (every dropped packet is counted somewhere)."""
        m = muxer.stats
        parts = [
            f"control in {m.control_in}",
            f"dropped control: {m.drop_unauthentic} unauthentic, {m.drop_malformed} malformed, "
            f"{m.drop_session} wrong session, {m.drop_early} early",
        ]
        core = data.core
        if core is not None:
            d = core.stats
            parts.insert(0, f"data in {d.rx_packets} out {d.tx_packets} packets")
            parts.append(
                f"dropped data: {d.drop_auth} unauthentic, {d.drop_replay} replayed, "
                f"{d.drop_malformed} malformed, {d.drop_no_key} unknown key, "
                f"{d.drop_compression} bad framing"
            )
        return "counters: " + "; ".join(parts)
