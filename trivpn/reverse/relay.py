"""`trivpn relay`: the public side. Accepts tunnel connections, authenticates them, gives
each a public port and carries every public connection on that port to its client.

The relay is three modules. relayconfig.py: `RelayConfig` and the start-up checks (a
relay that no client could use refuses to start). This one: `Relay`, the tunnel listener
and what all sessions share: the pre-auth `SourceGuard` and failed-login log, the port
allocator, the takeover commitments, the buffer pool, the bandwidth shapers, the metrics
and the rate-limited log lines. relayrunner.py: `RelayRunner`, one authenticated session
with its public ports (or subdomain) and their accept loops.

Each tunnel connection runs in its own task (a failing or hostile session ends only
itself). Ports come from a `PortAllocator`: a client that reconnects within the lease gets
its port back, and a reconnect while the old session is still half-alive takes it over
(see relayrunner.py), only if it proves it is the same client (`takeover_refused`).
"""

from __future__ import annotations

import logging
import ssl

import trio

from trivpn.errors import ConfigError
from trivpn.reverse import connection
from trivpn.reverse.bucket import Shaper
from trivpn.reverse.guard import LogBudget, SourceGuard
from trivpn.reverse.handshake import TAKEOVER_REFUSED, takeover_proven
from trivpn.reverse.http.router import NameRouter
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.ports import Owner, PortAllocator
from trivpn.reverse.relayconfig import (
    ClientLimits,
    RelayConfig,
    check_config,
    load_tokens,
    server_tls,
)
from trivpn.reverse.relayrunner import RelayRunner
from trivpn.reverse.scheduler import BufferPool
from trivpn.reverse.session import Session
from trivpn.reverse.sockets import (
    EvictableScope,
    bind_refused,
    peer_name,
    raise_nofile_limit,
    source_host,
)

# RelayConfig, ClientLimits, load_tokens and RelayRunner stay importable from here
__all__ = [
    "ClientLimits",
    "Relay",
    "RelayConfig",
    "RelayRunner",
    "load_tokens",
]

log = logging.getLogger("trivpn.reverse")

LOG_INTERVAL = 10.0  # seconds between two lines about refused public connections


class Relay:
    """The tunnel listener and the state its sessions share (one per `trivpn relay`)."""

    def __init__(self, config: RelayConfig) -> None:
        check_config(config)
        self.config = config
        self.allocator = PortAllocator(
            config.start_port,
            config.end_port,
            config.lease,
            idle_lease=config.idle_lease,
            default_quota=config.port_quota,
            quotas={n: c.port_quota for n, c in config.clients.items() if c.port_quota is not None},
        )
        self.by_owner: dict[Owner, RelayRunner] = {}
        #: per owner, the commitment its last bound session left for the next takeover
        self.commits: dict[Owner, bytes] = {}
        self.live: dict[str, list[Metrics]] = {}
        self.totals: dict[str, Metrics] = {}
        self.tunnel_port = config.port
        self.guard = SourceGuard(config.guard)
        self.pool = BufferPool(config.relay_buffer)
        self.shapers: dict[str, Shaper] = {}  # per token name, shared by its sessions
        #: per token name: the lines of refused public connections under a flood
        self.refusal_log: dict[str, LogBudget] = {}
        self.bind_log: dict[str, LogBudget] = {}  # per cause: public ports that failed to bind
        self.router = (
            NameRouter(config.routing, config.lease, config.name_quota) if config.routing else None
        )
        self._ssl = server_tls(config)

    def stream_refused(self, name: str, peer: str, why: str) -> None:
        """A public connection the client's session cannot carry (`max_streams`, closing):
        one INFO line, then a count per interval (`LogBudget`), per client name."""
        budget = self.refusal_log.get(name)
        if budget is None:
            budget = self.refusal_log[name] = LogBudget(LOG_INTERVAL)
        if budget.allow(trio.current_time()):
            log.info(
                "client %s: refusing public connection from %s: %s "
                "(more within %g s are counted, not logged)",
                name,
                peer,
                why,
                budget.interval,
            )

    def bind_failed(self, name: str, host: str, port: int, exc: OSError) -> None:
        """A public port could not be bound (the client gets BIND_ERR and retries): one
        WARNING per cause, then a count per interval, so the operator sees it once."""
        cause = exc.strerror or str(exc)
        budget = self.bind_log.get(cause)
        if budget is None:
            if len(self.bind_log) >= 64:  # causes are errno texts: a few at most
                self.bind_log.clear()
            budget = self.bind_log[cause] = LogBudget(LOG_INTERVAL)
        if budget.allow(trio.current_time()):
            log.warning(
                "client %s: cannot bind public port %d on %s: %s "
                "(more within %g s are counted, not logged)",
                name,
                port,
                host,
                cause,
                budget.interval,
            )

    async def _report_suppressed(self) -> None:
        """The count of refusal lines a flood had suppressed, once per interval."""
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            for name, budget in list(self.refusal_log.items()):
                n = budget.due(now)
                if n:
                    log.info(
                        "client %s: %d more public connections refused in the last %g s",
                        name,
                        n,
                        budget.interval,
                    )
            for cause, budget in list(self.bind_log.items()):
                n = budget.due(now)
                if n:
                    log.warning(
                        "%d more public port binds failed in the last %g s: %s",
                        n,
                        budget.interval,
                        cause,
                    )

    def takeover_refused(self, owner: Owner, reveal: bytes) -> str | None:
        """Why a session of `owner` may not take over its live session or leased port,
        or None: it may (a new owner, or it revealed the key the last one committed to)."""
        stored = self.commits.get(owner)
        known = owner in self.by_owner or self.allocator.port_of(owner) is not None
        if stored is None or not known or takeover_proven(stored, reveal):
            return None
        return f"{TAKEOVER_REFUSED}: this client id is in use and the proof does not match"

    def remember_commit(self, owner: Owner, commit: bytes) -> None:
        """Keep the bound session's commitment (an older client gives none: its owner
        then stays open to takeover without proof, as before); forget those of owners
        with no port."""
        if commit:
            self.commits[owner] = commit
        else:
            self.commits.pop(owner, None)
        span = self.config.end_port - self.config.start_port + 1
        if len(self.commits) > 2 * span + 16:
            for other in list(self.commits):
                if other not in self.by_owner and self.allocator.port_of(other) is None:
                    del self.commits[other]

    def shaper_for(self, name: str) -> Shaper | None:
        """The bandwidth limit of this client (one pair of buckets per token name)."""
        limits = self.config.clients.get(name)
        rate = limits.bandwidth if limits is not None else None
        if rate is None:
            rate = self.config.bandwidth
        if rate is None:
            return None
        shaper = self.shapers.get(name)
        if shaper is None:
            shaper = self.shapers[name] = Shaper.for_rate(rate, trio.current_time())
        return shaper

    def metrics_groups(self) -> dict[str, list[Metrics]]:
        out: dict[str, list[Metrics]] = {}
        for name, total in self.totals.items():
            out.setdefault(name, []).append(total)
        for name, ms in self.live.items():
            out.setdefault(name, []).extend(ms)
        return out

    def summary(self) -> str:
        from trivpn.reverse.metrics import merged

        parts = []
        for name, ms in sorted(self.metrics_groups().items()):
            m = merged(ms)
            m.state = f"{len(self.live.get(name, []))} live session(s)"
            parts.append(m.summary(f"client {name}"))
        return "\n".join(parts) if parts else "── relay ── no client connected"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen for tunnel connections; reports the bound tunnel port once listening."""
        cfg = self.config
        old, new = raise_nofile_limit()
        if new != old:
            log.debug("open-file limit raised from %d to %d", old, new)
        if cfg.public_host:
            why = await bind_refused(cfg.public_host)
            if why is not None:
                raise ConfigError(f"--public-host {cfg.public_host}: cannot bind ports: {why}")
        try:
            listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host or None)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {cfg.host or '*'}:{cfg.port}: {exc.strerror}"
            ) from None
        self.tunnel_port = listeners[0].socket.getsockname()[1]
        log.info(
            "relay listening on %s:%d (%s), public ports %d-%d",
            cfg.host or "*",
            self.tunnel_port,
            "TLS" if self._ssl else "plain TCP",
            cfg.start_port,
            cfg.end_port,
        )
        async with trio.open_nursery() as nursery:
            if self.router is not None:
                await nursery.start(self.router.serve)
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
            nursery.start_soon(self._report_suppressed)
            task_status.started(self.tunnel_port)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async with listener:
            while True:
                try:
                    conn = await listener.accept()
                except OSError as exc:  # EMFILE and friends: back off instead of spinning
                    log.warning("accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._handle, conn)

    async def _handle(self, conn: trio.SocketStream) -> None:
        peer = peer_name(conn)
        source = source_host(conn)
        slot = EvictableScope()
        refused = self.guard.admit(source, trio.current_time(), slot)
        if refused is not None:  # debug only: a flood must not flood the log too
            log.debug("refusing tunnel connection from %s: %s", peer, refused)
            await trio.aclose_forcefully(conn)
            return
        log.debug("tunnel connection from %s", peer)
        with slot.scope:
            await self._serve_tunnel(conn, peer, source, slot)
        if slot.scope.cancelled_caught:  # evicted before it authenticated
            log.debug("tunnel connection from %s evicted: the pre-auth table is full", peer)
            await trio.aclose_forcefully(conn)

    async def _serve_tunnel(
        self, conn: trio.SocketStream, peer: str, source: str, slot: EvictableScope
    ) -> None:
        tunnel: connection.Connection | None = None
        runner: RelayRunner | None = None
        try:
            tunnel = await connection.accept(conn, self._ssl)
            session = Session(
                "relay",
                trio.current_time(),
                self.config.session,
                tokens=self.config.tokens,
                pool=self.pool,
            )
            runner = RelayRunner(self, session, tunnel, peer, source)
            runner.guard_slot = slot
            await runner.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            level = logging.INFO if runner is not None and runner.name else logging.DEBUG
            log.log(level, "tunnel connection from %s failed: %s", peer, exc)
            await _close(tunnel, conn)
        except Exception:  # one broken session must never take the relay down
            log.exception("internal error in the session from %s", peer)
            await _close(tunnel, conn)
        finally:
            if runner is None or not runner.name:
                self.guard.left(source, slot)  # a no-op once evicted
            if runner is not None and runner.auth_failed:
                self._login_failed(source, peer, runner.auth_failed)

    def _login_failed(self, source: str, peer: str, reason: str) -> None:
        """Log a wrong token, at most `max_failures` + 1 lines per source and window."""
        cfg = self.guard.config
        count = self.guard.login_failed(source, trio.current_time())
        if count < cfg.max_failures:
            log.warning("failed login from %s: %s", peer, reason)
        elif count == cfg.max_failures:
            log.warning(
                "failed login from %s: %s; %d in a row, its connections are refused for %g s",
                peer,
                reason,
                count,
                cfg.failure_window,
            )


async def _close(tunnel: connection.Connection | None, conn: trio.SocketStream) -> None:
    if tunnel is not None:
        await tunnel.aclose()
    else:
        await trio.aclose_forcefully(conn)
