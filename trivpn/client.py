"""The OpenVPN client: builds the session stack from a profile and runs it under the manager.

Each session opens a transport, plugs it (through networkio, or the data-plane threads) and
the TUN into a client-role `trivpn.session.stack.SessionStack` — whose docstring is the
channel map — waits for the tunnel and applies the network settings.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import trio

from trivpn import __version__
from trivpn.controlchannel.service import control_payload_size
from trivpn.controlchannel.wrap import (
    EARLY_NEG_START,
    ControlWrap,
    NoWrap,
    StaticKey,
    TLSAuth,
    TLSCrypt,
    TLSCryptV2ClientKey,
)
from trivpn.datachannel.crypto import SUPPORTED_DATA_CIPHERS, normalize_data_cipher
from trivpn.datachannel.fastpath import FastPathIO
from trivpn.datachannel.service import DataService
from trivpn.errors import ConfigError, FatalError, SessionRestart
from trivpn.messages import AuthPending, SendExit, SendExitNotify, TLSCommand, TunnelUp
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
from trivpn.profile.profile import Profile, Remote
from trivpn.profile.push import PushedSettings
from trivpn.session.stack import DATA_CHANNEL_SIZE, SessionStack, TLSPorts
from trivpn.tlssession.core import TLSSession
from trivpn.tlssession.keymethod import (
    IV_PROTO_AUTH_FAIL_TEMP,
    IV_PROTO_AUTH_PENDING_KW,
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_DYN_TLS_CRYPT,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    occ_options_string,
    peer_info_string,
)
from trivpn.tlssession.keyschedule import KeySchedule, KeyScheduleConfig
from trivpn.tlssession.service import AuthTokenExpired, CipherPolicy, TLSService
from trivpn.tlssession.tls import TLSConfig, TLSEngine
from trivpn.tun.linux import LinuxTun
from trivpn.tun.netconfig import NetConfigurator, TunConfig
from trivpn.tun.service import run_tun
from trivpn.workers.manager import WorkersManager, primary_error, start_named

log = logging.getLogger("trivpn")

#: OpenVPN's hand-window: the whole TLS + push exchange must finish within this.
HAND_WINDOW = 60.0
#: `low_latency`: seconds after the last data packet during which the data-plane threads
#: keep their hot path warm (see datachannel/fastpath.py): covers request/response and
#: typing-speed traffic, and bounds the CPU spent after each burst.
LOW_LATENCY_WARM_FOR = 0.1
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


#: Reconnect backoff (first delay, cap) in seconds when the profile sets no connect-retry.
DEFAULT_CONNECT_RETRY = (1, 30)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place to connect to: a remote, with the profile (or <connection> block) it came from."""

    profile: Profile
    remote: Remote


def candidates(profile: Profile, rng: random.Random) -> list[Candidate]:
    """Remotes in the order they are tried: every remote of every <connection> block."""
    out = [Candidate(v, r) for v in (profile, *profile.alternatives) for r in v.remotes]
    if profile.remote_random:
        rng.shuffle(out)
    return out


def backoff_delay(failures: int, first: float, cap: float, rng: random.Random) -> float:
    """`first` doubling per consecutive failure up to `cap`, with ±20 % jitter (so many
    clients cut off together do not come back in step)."""
    base = min(cap, first * 2.0 ** max(0, failures - 1))
    return max(0.0, base * rng.uniform(0.8, 1.2))


@dataclass(slots=True)
class _LiveSession:
    """What the exit hook needs of the session that is running now."""

    tls: TLSService
    endpoint: Endpoint
    commands: trio.MemorySendChannel[TLSCommand]
    data_control: trio.MemorySendChannel[list[object]]


def build_wrap(profile: Profile, now_unix: int) -> tuple[ControlWrap, bytes | None]:
    """The control-channel protection, and the tls-crypt-v2 WKc to send (if any)."""
    if profile.tls_crypt_v2:
        v2 = TLSCryptV2ClientKey.from_text(profile.tls_crypt_v2)
        # replay ids start at EARLY_NEG_START: "I can do the stateless cookie handshake"
        wrap = TLSCrypt(v2.key, server=False, timestamp=now_unix, initial_packet_id=EARLY_NEG_START + 1)
        return wrap, v2.wkc
    return _build_v1_wrap(profile, now_unix), None


def wrap_key_bytes(profile: Profile) -> bytes | None:
    """The 256 bytes of the configured control-channel key (mixed into dyn-tls-crypt)."""
    if profile.tls_crypt_v2:
        return TLSCryptV2ClientKey.from_text(profile.tls_crypt_v2).key.data
    text = profile.tls_crypt or profile.tls_auth
    return StaticKey.from_text(text).data if text else None


def _build_v1_wrap(profile: Profile, now_unix: int) -> ControlWrap:
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
            n = normalize_data_cipher(name)
        except ConfigError:
            log.warning("data-ciphers: %s is not supported and is not offered to the server", name)
            continue
        if n not in out:
            out.append(n)
    if not out:
        raise ConfigError(
            f"none of data-ciphers ({':'.join(profile.data_ciphers)}) is supported; "
            f"use one of {', '.join(SUPPORTED_DATA_CIPHERS)}"
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
        no_reconnect: bool = False,
        give_up_after: float | None = None,
        family: int | None = None,
        rng: random.Random | None = None,
        data_threads: bool = True,
        low_latency: bool = False,
    ) -> None:
        """`on_tunnel_up` runs once the keys are in place and before the tunnel is reported
        up: a privileged manager applies the network settings there (see issue 7).

        `data_threads`: move data packets of UDP sessions over a kernel TUN in two
        data-plane threads (`datachannel.fastpath`) instead of trio tasks; `low_latency`
        keeps those threads' hot path warm for a moment after traffic (costs CPU)."""
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
        TLSEngine(self.tls_config)  # fail now, not after connecting, on unusable PEM
        self.no_reconnect = no_reconnect
        if family not in (None, 4, 6):
            raise ConfigError("the address family must be 4 or 6")
        self.family = family
        #: seconds after which a client that never got a tunnel stops retrying (None: never)
        self.give_up_after = give_up_after
        self._rng = rng or random.Random()
        self._live: _LiveSession | None = None
        self._came_up = False
        self._auth_token: str | None = None
        self._configurator: NetConfigurator | None = None
        self._applied: TunConfig | None = None
        self._manager: WorkersManager | None = None
        self.data_threads = data_threads
        self.low_latency = low_latency

    def _iv_proto(self) -> int:
        bits = (
            IV_PROTO_DATA_V2
            | IV_PROTO_REQUEST_PUSH
            | IV_PROTO_CC_EXIT_NOTIFY
            | IV_PROTO_AUTH_PENDING_KW  # AUTH_PENDING,timeout N extends the wait
            | IV_PROTO_AUTH_FAIL_TEMP  # AUTH_FAILED,TEMP is retried, not fatal
        )
        if self.key_derivation != "prf":
            # dynamic tls-crypt needs the exporter, so both come together
            bits |= IV_PROTO_TLS_KEY_EXPORT | IV_PROTO_DYN_TLS_CRYPT
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
                password=auth_token or self._auth_token or self.password,
                pull=p.pull and key_id == 0,
            )

        return make

    async def _open(self, cand: Candidate, attempt: int, connect_timeout: float) -> Transport:
        """Resolve the remote and open one transport to it (no retry: the caller loops)."""
        remote = cand.remote
        proto = remote.proto
        if self.family is not None:  # -4 / -6 on the command line override the profile
            proto = proto.rstrip("46") + str(self.family)
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
        cands = candidates(self.profile, self._rng)
        started_at = trio.current_time()
        unresolved_since: float | None = None
        tries = [0] * len(cands)
        index = 0
        failures = 0
        status: trio.TaskStatus[TunnelInfo] | None = task_status
        while True:
            cand = cands[index]
            tries[index] += 1
            came_up = False
            reason = "the session ended"
            err: BaseException | None = None
            try:
                came_up = await self._session(cand, tries[index] - 1, status)
            except BaseException as exc:
                err = primary_error(exc)
                if isinstance(err, trio.Cancelled) or not isinstance(err, SessionRestart):
                    raise
                if self.no_reconnect:
                    raise err from None
                came_up = self._came_up
                reason = str(err)
                if isinstance(err, AuthTokenExpired):
                    self._auth_token = None
                if isinstance(err, ResolveError):
                    unresolved_since = unresolved_since or trio.current_time()
                    limit_s = cand.profile.resolv_retry
                    if limit_s is not None and trio.current_time() - unresolved_since >= limit_s:
                        raise FatalError(f"{reason} (gave up after resolv-retry {limit_s:g} s)") from None
                else:
                    unresolved_since = None
            advance = isinstance(err, SessionRestart) and err.advance
            if came_up:
                status = None
                failures = 0
                if advance:
                    index = (index + 1) % len(cands)
            else:
                failures += 1
                index = (index + 1) % len(cands)
                limit = cand.profile.connect_retry_max
                if limit and all(t >= limit for t in tries):
                    raise FatalError(
                        f"giving up after {limit} attempt(s) at each remote (connect-retry-max): {reason}"
                    )
            first, cap = cand.profile.connect_retry or DEFAULT_CONNECT_RETRY
            delay = backoff_delay(max(failures, 1), first, cap, self._rng)
            if status is not None and self.give_up_after is not None:
                if trio.current_time() + delay >= started_at + self.give_up_after:
                    raise FatalError(f"no tunnel within {self.give_up_after:g} s: {reason}")
            log.warning("%s; reconnecting in %.1f s", reason, delay)
            await trio.sleep(delay)

    async def _session(
        self, cand: Candidate, attempt: int, task_status: trio.TaskStatus[TunnelInfo] | None
    ) -> bool:
        """One session: every layer in its own nursery, until something ends it."""
        self._came_up = False
        profile = cand.profile
        window = float(min(self.hand_window, profile.server_poll_timeout or self.hand_window))
        deadline = trio.current_time() + window
        with trio.move_on_at(deadline) as connect_scope:
            transport = await self._open(cand, attempt, window)
        if connect_scope.cancelled_caught:
            raise TransportError(f"no connection to {cand.remote.host} within {window:g} s")
        endpoint = transport.endpoint
        wrap, wkc = build_wrap(profile, int(time.time()))
        sid = os.urandom(8)
        while not any(sid):
            sid = os.urandom(8)
        muxer = PacketMuxer(wrap, sid, wkc=wkc)

        net_up_s, net_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        net_down_s, net_down_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        fast: FastPathIO | None = None
        tun_up_s = tun_up_r = tun_down_s = tun_down_r = None
        if self.data_threads and isinstance(self.device, LinuxTun) and type(transport) is UDPTransport:
            warm = LOW_LATENCY_WARM_FOR if self.low_latency else 0.0
            fast = FastPathIO(transport, self.device, net_up_s, warm_for=warm)
            log.info(
                "data packets move in two data-plane threads%s",
                " (low-latency: kept warm after traffic)" if warm else "",
            )
        else:
            tun_up_s, tun_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
            tun_down_s, tun_down_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)

        keepalive = (
            float(profile.ping or (profile.keepalive[0] if profile.keepalive else 0)),
            float(profile.ping_restart or (profile.keepalive[1] if profile.keepalive else 0)),
            float(profile.ping_exit or 0),
        )
        schedule = KeySchedule(
            KeyScheduleConfig(
                role="client",
                policy=CipherPolicy(
                    self.ciphers,
                    profile.data_ciphers_fallback or profile.cipher,
                    self.key_derivation,
                    auth=profile.auth or "SHA1",
                ),
                reneg_sec=float(profile.reneg_sec if profile.reneg_sec is not None else 3600),
                reneg_bytes=profile.reneg_bytes or 0,
                reneg_pkts=profile.reneg_pkts or 0,
                hand_window=self.hand_window,
                keepalive=keepalive,
                wrap_key=wrap_key_bytes(profile),
                pull=profile.pull,
            ),
            self._make_session_factory(cand.remote.proto),
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
