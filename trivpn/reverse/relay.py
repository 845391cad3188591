"""`trivpn relay`: the public side. Accepts tunnel connections, authenticates them, gives
each a public port and carries every public connection on that port to its client.

Each tunnel connection runs in its own task (a failing or hostile session ends only
itself). Ports come from a `PortAllocator`: a client that reconnects within the lease gets
its port back, and a reconnect while the old connection is still half-alive takes over
explicitly: the old session is told GOAWAY(REPLACED) and its listener is closed *before*
the new one binds, so a stale connection can never hold a port hostage (bore #125) and a
takeover never waits on the old session indefinitely (frp #3543).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from dataclasses import field

import trio

from trivpn.errors import ConfigError
from trivpn.records import dataclass
from trivpn.reverse import connection
from trivpn.reverse import events as E
from trivpn.reverse.bucket import Shaper
from trivpn.reverse.config import SessionConfig
from trivpn.reverse.events import StreamClosedError
from trivpn.reverse.frames import ErrorCode
from trivpn.reverse.guard import GuardConfig, LogBudget, SourceGuard
from trivpn.reverse.handshake import TAKEOVER_REFUSED, takeover_proven
from trivpn.reverse.http.router import NameRouter, RoutingConfig, bind_name
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.pipe import StreamPipe
from trivpn.reverse.ports import (
    DEFAULT_PORT_QUOTA,
    IDLE_LEASE,
    Owner,
    PortAllocator,
    PortUnavailable,
)
from trivpn.reverse.scheduler import BufferPool
from trivpn.reverse.service import SessionRunner
from trivpn.reverse.session import Session
from trivpn.reverse.sockets import (
    EvictableScope,
    bind_refused,
    close_plain,
    format_addr,
    peer_name,
    plain_socket,
    raise_nofile_limit,
    source_host,
)

log = logging.getLogger("trivpn.reverse")

TAKEOVER_WAIT = 3.0
LOG_INTERVAL = 10.0  # seconds between two lines about refused public connections


@dataclass(slots=True)
class ClientLimits:
    """Per token name; None takes the relay-wide value."""

    port_quota: int | None = None
    bandwidth: float | None = None  # bytes per second, each direction


@dataclass(slots=True)
class RelayConfig:
    host: str = ""
    port: int = 9000
    start_port: int = 10000
    end_port: int = 10999
    tokens: dict[str, bytes] = field(default_factory=dict)
    public_host: str | None = None  # default: the tunnel listener's host
    tls_cert: str | None = None
    tls_key: str | None = None
    lease: float = 60.0
    idle_lease: float = IDLE_LEASE  # lease of a port no stream went through
    port_quota: int = DEFAULT_PORT_QUOTA  # ports (in use or leased) per token name
    bandwidth: float | None = None  # default per-client limit, bytes/s each direction
    clients: dict[str, ClientLimits] = field(default_factory=dict)
    observe_http: bool = True
    log_query: bool = False  # request log: show query strings (redacted by default)
    session: SessionConfig = field(default_factory=SessionConfig)
    #: received-but-unconsumed bytes of all sessions together (`--relay-buffer`)
    relay_buffer: int = 256 * 1024 * 1024
    guard: GuardConfig = field(default_factory=GuardConfig)  # pre-auth caps, failed logins
    routing: RoutingConfig | None = None  # --domain with --http-addr / --https-addr


def load_tokens(path: str) -> dict[str, bytes]:
    """A tokens file: one `name:token` (or bare token) a line; '#' starts a comment."""
    from trivpn.reverse.configfile import read_token_text  # bounded, strict UTF-8

    try:
        lines = read_token_text(path).splitlines()
    except ValueError as exc:
        raise ConfigError(f"cannot read the tokens file {path}: {exc}") from None
    tokens: dict[str, bytes] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep:
            name, token = f"client{len(tokens) + 1}", line
        name, token = name.strip(), token.strip()
        if not name or not token:
            raise ConfigError(f"{path} line {n}: expected name:token")
        if name in tokens:
            raise ConfigError(f"{path} line {n}: client name {name!r} appears twice")
        tokens[name] = token.encode()
    if not tokens:
        raise ConfigError(f"the tokens file {path} has no tokens")
    return tokens


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        if not config.tokens or not all(config.tokens.values()):
            raise ConfigError(
                "the relay needs at least one non-empty token (--token or --tokens-file)"
            )
        if not 1 <= config.start_port <= config.end_port <= 65535:
            raise ConfigError(f"bad public port range {config.start_port}-{config.end_port}")
        self.config = config
        if config.port_quota < 1 or any(
            c.port_quota is not None and c.port_quota < 1 for c in config.clients.values()
        ):
            raise ConfigError("a port quota must be at least 1")
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
        self.router = NameRouter(config.routing, config.lease) if config.routing else None
        self._ssl: ssl.SSLContext | None = None
        if config.tls_cert or config.tls_key:
            if not (config.tls_cert and config.tls_key):
                raise ConfigError("--tls-cert and --tls-key go together")
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                ctx.load_cert_chain(config.tls_cert, config.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the TLS certificate/key: {exc}") from None
            self._ssl = ctx

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


class RelayRunner(SessionRunner):
    def __init__(
        self,
        relay: Relay,
        session: Session,
        tunnel: connection.Connection,
        peer: str,
        source: str = "?",
    ) -> None:
        super().__init__(
            session,
            tunnel,
            Metrics(),
            observe_http=relay.config.observe_http,
            log_query=relay.config.log_query,
        )
        self.relay = relay
        self.peer = peer
        self.source = source
        self.name = ""
        self.owner: Owner | None = None
        self.port = 0  # the first binding's
        self.ports: list[int] = []  # one per binding
        self.used_ports: set[int] = set()  # ports a stream went through (worth a full lease)
        self.shaper: Shaper | None = None
        self.route_name = ""  # a named bind: the subdomain, and its ROUTE_* bits
        self.route_bits = 0
        self.guard_slot: EvictableScope | None = None  # its place in the pre-auth table
        self.reveal = b""  # the client's takeover proof and next commitment (AUTH)
        self.commit = b""

    async def run(self) -> E.SessionClosed | None:
        try:
            return await super().run()
        finally:
            self._unregister()

    def _unregister(self) -> None:
        relay = self.relay
        if self.owner is not None:
            for port in self.ports:
                used = port in self.used_ports
                keep = relay.allocator.release(port, self.owner, trio.current_time(), used=used)
                log.info(
                    "client %s left; port %d leased to it for %g s%s",
                    self.name,
                    port,
                    keep,
                    "" if used else " (no stream went through it)",
                )
            if self.route_name and relay.router is not None:
                relay.router.release(self, self.route_name)
            if relay.by_owner.get(self.owner) is self:
                del relay.by_owner[self.owner]
        if self.name:
            self.metrics.ended = time.time()
            live = relay.live.get(self.name, [])
            if self.metrics in live:
                live.remove(self.metrics)
            total = relay.totals.setdefault(self.name, Metrics(state="TOTAL", is_total=True))
            total.add(self.metrics)

    def on_event(self, ev: E.Event) -> None:
        if isinstance(ev, E.Authenticated):
            self.name = ev.name
            self.relay.guard.authenticated(self.source, self.guard_slot)
            self.owner = (ev.name, ev.client_id)
            self.reveal, self.commit = ev.reveal, ev.commit
            self.shaper = self.relay.shaper_for(ev.name)
            self.metrics.connections = 1
            self.relay.live.setdefault(ev.name, []).append(self.metrics)
            log.info("client %s authenticated from %s", ev.name, self.peer)
        elif isinstance(ev, E.BindRequested):
            assert self.nursery is not None and self.owner is not None
            refused = self.relay.takeover_refused(self.owner, self.reveal)
            if refused is not None:  # a bare client id replay: no port, no takeover
                log.warning("client %s from %s: %s", self.name, self.peer, refused)
                self.session.reject_bind(refused)
                self.ring()
            elif ev.name:
                self.nursery.start_soon(self._bind_name, ev.name, ev.routes)
            else:
                self.nursery.start_soon(self._bind, ev.bindings or (E.Binding(ev.port),))

    def on_stream_reset(self, ev: E.StreamReset) -> None:
        if ev.by_peer and ev.code == ErrorCode.REFUSED:
            self.metrics.streams_refused += 1

    async def _bind(self, bindings: tuple[E.Binding, ...]) -> None:
        """A public port per binding, all or none (the BIND_ERR names the one that failed)."""
        relay = self.relay
        assert self.owner is not None and self.nursery is not None
        ports: list[int] = []
        listening: list[trio.SocketListener] = []
        slots: list[int] = []  # listening[i] serves binding slots[i]
        refused = ""
        for slot, b in enumerate(bindings):
            got = await _open_port(self, self.owner, b.port, slot)
            if isinstance(got, str):
                refused = f"tunnel {b.label or slot + 1}: {got}" if len(bindings) > 1 else got
                break
            ports.append(got[0])
            listening += got[1]
            slots += [slot] * len(got[1])
        if refused or self.session.closed:
            for lst in listening:
                await lst.aclose()
            for p in ports:
                relay.allocator.forget(p)
            if refused:
                self.session.reject_bind(refused)
                self.dispatch()
                self.ring()
            return
        self.port, self.ports = ports[0], ports
        relay.by_owner[self.owner] = self
        relay.remember_commit(self.owner, self.commit)
        self.session.accept_binds(ports, int(relay.config.lease))
        self.dispatch()
        self.ring()
        for b, port in zip(bindings, ports, strict=True):
            label = f" for tunnel {b.label}" if b.label else ""
            log.info("client %s bound to public port %d%s", self.name, port, label)
        for lst, slot in zip(listening, slots, strict=True):
            self.nursery.start_soon(self._public_accept, lst, slot)

    async def _bind_name(self, name: str, routes: int) -> None:
        owner = self.owner
        assert owner is not None

        async def replace() -> None:
            await _replace_previous(self, owner, 0)

        await bind_name(self.relay.router, self, name, routes, replace)

    def adopt(self, conn: socket.socket, peer: str, preface: bytes = b"", slot: int = 0) -> bool:
        """Carry one public connection over this session (on binding `slot`); `preface` is
        what was already read from it (a routed request head). False: it cannot."""
        try:
            sid = self.session.open_stream(peer, trio.current_time(), slot)
            if preface:
                self.session.send_data(sid, preface)
                self.metrics.bytes_in += len(preface)
        except StreamClosedError as exc:
            self.relay.stream_refused(self.name, peer, str(exc))
            return False
        pipe = StreamPipe(self, sid, peer, self.observe_http, requests_from_socket=True)
        pipe.shaper = self.shaper
        if preface:
            pipe._observe(preface, True)
        self.pipes[sid] = pipe
        self.flush()
        assert self.nursery is not None

        async def opener() -> socket.socket:
            return conn

        self.nursery.start_soon(self.run_pipe, pipe, opener)
        return True

    async def _public_accept(self, listener: trio.SocketListener, slot: int = 0) -> None:
        lport = listener.socket.getsockname()[1]
        async with listener:
            while True:
                try:
                    tsock, addr = await listener.socket.accept()
                except OSError as exc:
                    log.warning("public accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                conn = plain_socket(tsock)
                if self.adopt(conn, format_addr(addr), slot=slot):
                    self.used_ports.add(lport)
                else:
                    close_plain(conn, reset=True)


async def _open_port(
    runner: RelayRunner, owner: Owner, requested: int, slot: int = 0
) -> tuple[int, list[trio.SocketListener]] | str:
    """A public port for this client, listening, or why not (the BIND_ERR reason).

    A port the allocator picked that turns out to be taken by another program is skipped
    (unless the client asked for exactly that one).
    """
    relay = runner.relay
    exclude: set[int] = set()
    for _ in range(64):
        try:
            port, takeover = relay.allocator.assign(
                owner, requested, trio.current_time(), frozenset(exclude), slot
            )
        except PortUnavailable as exc:
            log.info("client %s: bind refused: %s", runner.name, exc)
            return str(exc)
        if takeover:
            await _replace_previous(runner, owner, port, slot)
        host = (
            relay.config.public_host if relay.config.public_host is not None else relay.config.host
        )
        try:
            listeners = await trio.open_tcp_listeners(port, host=host or None)
        except OSError as exc:
            relay.allocator.forget(port)
            if exc.errno == errno.EADDRINUSE and not requested:
                exclude.add(port)
                continue
            relay.bind_failed(runner.name, host or "*", port, exc)
            return f"port {port}: {exc.strerror}"
        return port, listeners
    return "no free port"


async def _replace_previous(runner: RelayRunner, owner: Owner, port: int, slot: int = 0) -> None:
    """The same client reconnected while its old session lingers: end that one first.

    Its listener closes before the port is bound again; the wait is bounded, so a takeover
    never hangs on a stuck session.
    """
    relay = runner.relay
    old = relay.by_owner.get(owner)
    if old is None or old is runner:
        return
    log.info("client %s reconnected: replacing its previous session", runner.name)
    old.session.close("replaced by a new connection of the same client", ErrorCode.REPLACED)
    old.dispatch()
    old.ring()
    with trio.move_on_after(TAKEOVER_WAIT) as scope:
        await old.done.wait()
    if scope.cancelled_caught and old.nursery is not None:
        old.nursery.cancel_scope.cancel()
        await old.done.wait()
    if port:  # a named bind re-leases its name itself
        relay.allocator.assign(owner, port, trio.current_time(), slot=slot)
