"""The OpenVPN client: runs the sessions of one client run, reconnecting between them.

`trivpn.engine.Engine` runs a Client on a device under a WorkersManager; which remote comes
next and when is decided by `trivpn.session.reconnect.ReconnectPolicy`.

Each session opens a transport (`trivpn.session.transport`), plugs it and the TUN into a
client-role stack (`trivpn.session.clientstack.ClientSession`, around the role-symmetric
`trivpn.session.stack.SessionStack` whose docstring is the channel map), waits for the
tunnel and applies the settings (`trivpn.session.netapply`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Unpack

import trio

from trivpn.errors import (
    AuthFailed,
    ConfigError,
    ConnectTimeout,
    FatalError,
    RetryLimitReached,
    SessionRestart,
)
from trivpn.messages import AuthTokenRenewed
from trivpn.networkio import Endpoint
from trivpn.networkio.transport import ResolveError
from trivpn.profile.profile import Profile
from trivpn.session.clientstack import LOW_LATENCY_WARM_FOR, ClientSession, tls_session_factory
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
from trivpn.session.killswitch import Hole, KillSwitch
from trivpn.session.netapply import TunApplier
from trivpn.session.netsettings import TunnelInfo, describe_tunnel, net_plan, tun_config_from
from trivpn.session.reconnect import (
    Candidate,
    GiveUp,
    ReconnectPolicy,
    SessionEnd,
    backoff_delay,
    candidates,
    restart_cause,
)
from trivpn.session.routenames import resolve_route_names, route_names
from trivpn.session.runevents import OnRunEvent, SessionRetry, SessionUp
from trivpn.session.stack import CONTROL_CHANNEL_SIZE, DATA_CHANNEL_SIZE
from trivpn.session.transport import open_within
from trivpn.tlssession.core import TLSSession
from trivpn.tlssession.service import AuthTokenExpired
from trivpn.workers.manager import WorkersManager, primary_error

if TYPE_CHECKING:
    from trivpn.observe.hooks import ClientObserver
    from trivpn.session.privdrop import PrivDrop
    from trivpn.session.scripts import ClientScripts, ScriptRunner

__all__ = [
    "ANNOUNCED_VERSION", "CONTROL_CHANNEL_SIZE", "DATA_CHANNEL_SIZE", "DEFAULT_CONNECT_RETRY",
    "HAND_WINDOW", "LOW_LATENCY_WARM_FOR", "Candidate", "Client", "TunnelInfo", "backoff_delay",
    "build_wrap", "candidates", "describe_tunnel", "negotiable_ciphers", "tun_config_from",
    "wrap_key_bytes",
]

log = logging.getLogger("trivpn")


def _privilege_drop(profile: Profile) -> PrivDrop | None:
    """`PrivDrop.from_profile`; its module (the privileged helper, json, pwd/grp: ≈ 7 ms) is
    imported only for a profile with `user`/`group`, not by every `trivpn connect`."""
    if profile.user is None and profile.group is None:
        return None
    from trivpn.session.privdrop import PrivDrop

    return PrivDrop.from_profile(profile)


def _script_runner(profile: Profile) -> ScriptRunner | None:
    """The profile's scripts; their module (≈ 3 ms) is imported only when it names one."""
    if not any(profile.scripts.values()):
        return None
    from trivpn.session.scripts import ScriptRunner

    return ScriptRunner(profile)


def _literal_version(host: str) -> int | None:
    """4 or 6 for an IP address literal, None for a name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def unreachable_remotes(config: SessionConfig) -> list[str]:
    """Why each remote that can never be reached cannot be, in profile order.

    A literal address of one family under a protocol forced to the other (`-6` with
    `remote 192.0.2.1`, `proto udp4` with an IPv6 literal) never resolves: the attempt
    loop retried "cannot resolve" until the connect timeout, or for ever. With a proxy the
    proxy's own address is the one we resolve; the remote is the proxy's business.
    """
    out: list[str] = []
    for conn in config.connections:
        proxy = conn.profile.http_proxy or conn.profile.socks_proxy
        for remote in conn.remotes:
            host = proxy.host if proxy is not None else remote.host
            if config.family is not None:
                wanted, why = config.family, f"-{config.family}"
            elif remote.proto.endswith(("4", "6")):
                wanted, why = int(remote.proto[-1]), f"proto {remote.proto}"
            else:
                continue
            version = _literal_version(host)
            if version is not None and version != wanted:
                what = "the proxy" if proxy is not None else "remote"
                out.append(f"{what} {host} is an IPv{version} address, but only IPv{wanted} may be used ({why})")
    return out


def check_remotes(config: SessionConfig) -> None:
    """One-line ConfigError when no remote can ever be reached; a warning for each remote
    that cannot while others can (they are still tried, and fail at once)."""
    problems = unreachable_remotes(config)
    total = sum(len(conn.remotes) for conn in config.connections)
    if problems and len(problems) == total:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(f"{problems[0]}{more}: no remote can be reached")
    for problem in problems:
        log.warning("%s: that remote can never be reached", problem)


class _Paths:
    """The run's `PathHooks`: the kill switch's holes and the redirect-gateway bypass route
    follow the server endpoints actually used."""

    def __init__(self, tun: TunApplier, kill: KillSwitch | None) -> None:
        self.tun = tun
        self.kill = kill

    def resolving(self, active: bool) -> None:
        if self.kill is not None:
            self.kill.allow_dns(active)

    def reaching(self, endpoints: Sequence[Endpoint]) -> None:
        if self.kill is not None:
            self.kill.allow([Hole(ep.address, ep.port, ep.proto) for ep in endpoints])
        self.tun.reaching([ep.address for ep in endpoints])


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
        on_event: OnRunEvent | None = None,
        observer: ClientObserver | None = None,
        kill_switch: KillSwitch | None = None,
        **overrides: Unpack[SessionOverrides],
    ) -> None:
        """`config` is built once (`SessionConfig.from_profile`); a Profile plus the
        overrides is accepted too and translated here.

        `on_tunnel_up` runs once the keys are in place and before the tunnel is reported
        up: a privileged manager applies the network settings there (see issue 7).
        `kill_switch` (started by the engine) is told of every server endpoint before the
        first packet goes there."""
        if isinstance(config, Profile):
            config = SessionConfig.from_profile(config, **overrides)
        elif overrides:
            raise TypeError("session overrides apply only when a Profile is given")
        check_remotes(config)
        self.config = config
        self.profile = config.profile
        self.device = device
        self.ifname = ifname
        self.configure_tun = configure_tun
        self.on_tunnel_up = on_tunnel_up
        self.info: TunnelInfo | None = None
        self._rng = rng or random.Random()
        self._live: ClientSession | None = None
        self._came_up = False
        self._auth_token: str | None = None
        self._tun: TunApplier | None = None
        # the profile's scripts run where trivpn configures a kernel TUN (`trivpn connect`)
        self._script_runner = _script_runner(self.profile) if configure_tun else None
        self._scripts: ClientScripts | None = None
        # `user`/`group`: root is given up once the TUN exists (trivpn connect only)
        self._privdrop = _privilege_drop(self.profile) if configure_tun else None
        self.kill_switch = kill_switch
        self._paths: _Paths | None = None
        #: the profile's route host names and their addresses, resolved once (routenames.py)
        self._route_addrs: dict[str, str | None] | None = None
        #: the library's hook: tunnel up, reconnecting, renegotiated (session/runevents.py)
        self.on_event = on_event
        self.observer = observer
        self._restart_scope: trio.CancelScope | None = None
        self._restart_reason: str | None = None
        #: the current session's exit notification went out: None = before a stop, else
        #: the restart it precedes (a session that ends after it ended as asked)
        self._goodbye: tuple[str | None] | None = None

    def restart(self, reason: str) -> None:
        """End the current session now and go on with the next attempt (SIGUSR1/SIGHUP)."""
        self._restart_reason = reason
        if self._restart_scope is not None:
            self._restart_scope.cancel()

    def _make_session_factory(
        self, proto: str, connection: ConnectionConfig | None = None
    ) -> Callable[[int, str | None], TLSSession]:
        """The per-key TLS session maker of this client's sessions (see `tls_session_factory`)."""
        return tls_session_factory(self.config, proto, connection, lambda: self._auth_token)

    def counters_line(self) -> str | None:
        """The live session's packet and drop counters (SIGUSR2), None between sessions."""
        return self._live.counters_line() if self._live is not None else None

    async def exit_notify(self, restart: str | None = None) -> None:
        """Tell the server we are leaving (EXIT with cc-exit, else OCC exit on UDP), before
        the stop or, when named, the `restart` that follows."""
        if self._live is not None and self.info is not None:
            self._goodbye = (restart,)
            await self._live.exit_notify()

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
        if self._script_runner is not None:
            from trivpn.session.scripts import ClientScripts

            self._scripts = ClientScripts(self._script_runner, manager.add_cleanup, lambda: manager.stop_reason)
        self._tun = TunApplier(
            self.ifname if self.configure_tun else None, manager.add_cleanup, device=self.device
        )
        self._paths = _Paths(self._tun, self.kill_switch)
        if self._privdrop is not None:  # before any network input: TLS and parsing run as the user
            self._privdrop.drop(self._tun, self._script_runner, self.kill_switch)
        policy = ReconnectPolicy.for_config(self.config, self._rng, trio.current_time())
        step = policy.first()
        status: trio.TaskStatus[TunnelInfo] | None = task_status
        delay = 0.0
        while True:
            came_up = False
            err: SessionRestart | None = None
            if self.observer is not None:
                await self.observer.hold(delay)
            try:
                came_up = await self._session(step.candidate, step.attempt, status, policy.give_up_at())
            except BaseException as exc:
                primary = primary_error(exc)
                if isinstance(primary, AuthFailed) and await self._retry_auth(primary):
                    primary = SessionRestart(str(primary))
                cause = None if isinstance(primary, trio.Cancelled) else restart_cause(primary)
                if cause is None:
                    raise
                goodbye = self._goodbye
                if goodbye is not None and (status is None or self._came_up):  # started() was called
                    # the server answers our EXIT by ending the session (on TCP it closes
                    # the connection at once): that is the goodbye, not a failure to report
                    # or to reconnect after. A stop cancels us next; a restart goes on as one.
                    log.info("session ended after the exit notification: %s", cause)
                    if goodbye[0] is None and manager.stop_reason is not None:
                        return
                    cause = SessionRestart(goodbye[0] or "exit notification sent")
                err = cause
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
                raise (ConnectTimeout if decision.timeout else RetryLimitReached)(decision.message) from err
            log.warning("%s; reconnecting in %.1f s", decision.reason, decision.delay)
            if self.on_event is not None:
                self.on_event(SessionRetry(decision.reason, decision.delay))
            if self.observer is not None:
                self.observer.state("RECONNECTING", self._restart_reason or decision.reason)
            await trio.sleep(decision.delay)
            step, delay = decision, decision.delay

    def _session_event(self, ev: Any) -> None:
        """An event after the tunnel came up: a renewed auth-token is kept for reconnects;
        the library's hook gets the renegotiations."""
        if isinstance(ev, AuthTokenRenewed):
            self._auth_token = ev.token
        elif self.on_event is not None:
            self.on_event(ev)

    async def _retry_auth(self, error: AuthFailed) -> bool:
        """AUTH_FAILED with management `auth-retry nointeract|interact`: try again."""
        if self.observer is None:
            return False
        return await self.observer.auth_failed(self, str(error))

    def _forget_password(self) -> None:
        """auth-nocache: the password leaves memory once it was accepted (later key
        exchanges and reconnects send the pushed auth-token, or ask `reauth` again)."""
        cfg = self.config
        if cfg.auth_nocache and cfg.password:
            # in place, not a copy: the live session's key-exchange factory holds this
            # object, and a copy would leave the password reachable through it
            object.__setattr__(cfg, "password", "")
            if isinstance(self.profile.auth_user_pass, tuple):
                self.profile.auth_user_pass = True

    async def _recall_password(self) -> None:
        """A reconnect after auth-nocache without an auth-token: the password again."""
        cfg = self.config
        if not (cfg.auth_nocache and cfg.username and not cfg.password and not self._auth_token):
            return
        if cfg.reauth is None:
            raise FatalError("auth-nocache: the password was dropped after use and nothing can supply it again")
        password = await trio.to_thread.run_sync(cfg.reauth)
        self.config = dataclasses.replace(cfg, password=password)

    async def _session(
        self, cand: Candidate, attempt: int, task_status: trio.TaskStatus[TunnelInfo] | None,
        give_up_at: float | None = None,
    ) -> bool:
        """One session, ended early by `restart` (as a SessionRestart naming its reason)."""
        self._restart_reason = None
        with trio.CancelScope() as scope:
            self._restart_scope = scope
            try:
                return await self._attempt(cand, attempt, task_status, give_up_at)
            finally:
                self._restart_scope = None
        raise SessionRestart(self._restart_reason or "restart requested")

    async def _attempt(
        self, cand: Candidate, attempt: int, task_status: trio.TaskStatus[TunnelInfo] | None,
        give_up_at: float | None = None,
    ) -> bool:
        """One session: every layer in its own nursery, until something ends it; the tunnel
        must come up within the connect window, and before `give_up_at` (--connect-timeout)."""
        self._came_up = False
        self._goodbye = None
        await self._recall_password()
        window = cand.connection.connect_window
        now = trio.current_time()
        if give_up_at is not None and give_up_at < now + window:
            window = max(give_up_at - now, 0.0)
        deadline = now + window
        observer = self.observer
        if observer is not None:
            observer.state("CONNECTING")
        transport = await open_within(cand, attempt, deadline, self.config.family, self._paths)
        session = ClientSession(self.config, cand, transport, self.device, lambda: self._auth_token)
        endpoint = transport.endpoint
        if observer is not None:
            observer.session_open(session)
            observer.state("WAIT")
        try:
            async with trio.open_nursery() as nursery:
                session.start(nursery)
                self._live = session
                up = await session.wait_up(deadline, window)
                info = TunnelInfo(
                    up.settings, up.cipher, up.key_derivation, up.peer_subject, up.tls_version,
                    endpoint.describe(), ifname=self.ifname,
                )
                if self._route_addrs is None:
                    self._route_addrs = await resolve_route_names(route_names(self.profile.routes), self._paths)
                try:
                    kernel = self._tun is not None and bool(self._tun.ifname)
                    plan = net_plan(
                        up.settings, endpoint.address, self.profile, kernel=kernel, names=self._route_addrs
                    )
                except FatalError as exc:  # what the server pushed cannot be applied
                    raise SessionRestart(f"unusable pushed settings: {exc}") from None
                info.tun_config = plan.tun
                if self._tun is not None:
                    reconnect = self._tun.configured
                    try:
                        self._tun.apply(plan)
                    except ConfigError as exc:
                        if not reconnect:  # the first tunnel: a problem here, end the run
                            raise
                        # ending the run would take the tunnel's routes (and their unreachable
                        # stand-ins) away: fail closed and try again, as for any unusable push
                        raise SessionRestart(f"cannot apply the pushed settings: {exc}") from None
                if self.on_tunnel_up is not None:
                    await self.on_tunnel_up(info)
                if self._scripts is not None:
                    from trivpn.session.scripts import ScriptContext

                    await self._scripts.tunnel_up(ScriptContext(
                        self.ifname or "", plan.tun, up.settings, self.profile,
                        endpoint.address, endpoint.port, endpoint.proto, up.peer_chain,
                    ))
                self.info = info
                self._came_up = True
                if up.settings.auth_token:  # reused on renegotiation and on reconnect
                    self._auth_token = up.settings.auth_token
                self._forget_password()
                log.info("%s", describe_tunnel(info))
                if self.on_event is not None:
                    self.on_event(SessionUp(info, session))
                if observer is not None:
                    observer.session_up(session, info)
                if task_status is not None:
                    task_status.started(info)
                await session.drain_events(self._session_event)
        finally:
            self._live = None
            transport.close()
            log.info("%s", session.counters_line())
            if observer is not None:
                observer.session_closed(session, self._restart_reason or "")
        return self._came_up
