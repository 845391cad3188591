"""The relay's name-routed public listeners (thin trio service over hostrouter/sni/names).

`--http-addr` serves every HTTP tunnel on one port, routed by the Host header of the first
request; `--https-addr` passes TLS through, routed by the ClientHello's server_name. For
each public connection a task reads the head with a `HeadReader` / `SniReader` (bounded in
bytes and time), then either hands the socket and the bytes read to the session that
leased the name (`RelayRunner.adopt`) or sends the reject (404 page, TLS alert) and
closes. Each port has its own `PendingTable` (guard.py) of connections between accept and
decision: at most `max_pending` in all and `max_pending_per_source` per source (IPv6: per
/64); when full, the oldest of the most-represented source makes room for a source with
fewer, so a slowloris crowd costs a bounded number of descriptors and, from one source
or many, cannot lock the port (or the other port) against everyone else. Refusals are
logged at WARNING, rate-limited (`LogBudget`: one line, then a count per interval).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from trivpn.errors import ConfigError
from trivpn.records import dataclass
from trivpn.reverse.guard import LogBudget, PendingTable, source_key
from trivpn.reverse.http.hostrouter import (
    HEAD_TIMEOUT,
    MAX_HEAD,
    HeadReader,
    Reject,
    Route,
    not_found,
    offline,
)
from trivpn.reverse.http.names import (
    DEFAULT_NAME_QUOTA,
    ROUTE_HTTP,
    ROUTE_TLS,
    NameLeases,
    NameUnavailable,
)
from trivpn.reverse.http.sni import ALERT_UNRECOGNIZED_NAME, SniReader, alert
from trivpn.reverse.sockets import EvictableScope, close_plain, format_addr, plain_socket

if TYPE_CHECKING:
    from trivpn.reverse.relayrunner import RelayRunner

log = logging.getLogger("trivpn.reverse")

REJECT_SEND_TIME = 2.0  # seconds to hand a 404 page or an alert to the kernel
LOG_INTERVAL = 10.0  # seconds between two refusal lines of one port (the rest counted)


@dataclass(slots=True)
class RoutingConfig:
    domain: str
    http_addr: tuple[str, int] | None = None
    https_addr: tuple[str, int] | None = None
    head_timeout: float = HEAD_TIMEOUT  # the whole head / ClientHello, however it trickles
    max_head: int = MAX_HEAD
    max_pending: int = 256  # public connections still being read, per port
    max_pending_per_source: int = 32  # of them from one source (IPv6: one /64)


class NameRouter:
    def __init__(
        self, config: RoutingConfig, lease: float, name_quota: int = DEFAULT_NAME_QUOTA
    ) -> None:
        domain = config.domain.lower().strip(".")
        if not domain or not all(c.isalnum() or c in "-." for c in domain):
            raise ConfigError(f"--domain: bad domain name {config.domain!r}")
        if config.http_addr is None and config.https_addr is None:
            raise ConfigError("--domain needs --http-addr and/or --https-addr")
        self.config = config
        self.domain = domain
        self.names = NameLeases(lease, name_quota)
        self.routes: dict[str, RelayRunner] = {}
        self.http_port = 0
        self.https_port = 0
        # per port (key: TLS or not): the connections waiting for their head
        self.tables = {
            tls: PendingTable(
                config.max_pending,
                config.max_pending_per_source,
                "connections waiting for their request head",
            )
            for tls in (False, True)
        }
        self.refusal_log = {tls: LogBudget(LOG_INTERVAL) for tls in (False, True)}
        self.rejected = 0  # refused at accept or by the head (404, 408, ...)

    @property
    def pending(self) -> int:
        return sum(t.count for t in self.tables.values())

    @property
    def evicted(self) -> int:
        return sum(t.evicted for t in self.tables.values())

    # leases (called by the relay's sessions) -------------------------------------------

    def host(self, name: str) -> str:
        return f"{name}.{self.domain}"

    def release(self, runner: RelayRunner, name: str) -> None:
        """The runner's session ended: unroute, and keep the name leased to its client."""
        if self.routes.get(name) is runner:
            del self.routes[name]
        if runner.owner is not None:
            self.names.release(name, runner.owner, trio.current_time())

    # public side ----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        async with trio.open_nursery() as nursery:
            for addr, tls in ((cfg.http_addr, False), (cfg.https_addr, True)):
                if addr is None:
                    continue
                host, port = addr
                try:
                    listeners = await trio.open_tcp_listeners(port, host=host or None)
                except OSError as exc:
                    raise ConfigError(
                        f"cannot listen on {host or '*'}:{port}: {exc.strerror}"
                    ) from None
                bound = listeners[0].socket.getsockname()[1]
                if tls:
                    self.https_port = bound
                else:
                    self.http_port = bound
                log.info(
                    "routing %s *.%s on %s:%d",
                    "TLS (by SNI, passed through)" if tls else "HTTP (by Host)",
                    self.domain,
                    host or "*",
                    bound,
                )
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, tls, nursery)
            nursery.start_soon(self._report_suppressed)
            task_status.started()

    async def _report_suppressed(self) -> None:
        """The count of refusal lines a flood had suppressed, once per interval."""
        while True:
            await trio.sleep(1.0)
            now = trio.current_time()
            for tls, budget in self.refusal_log.items():
                n = budget.due(now)
                if n:
                    log.warning(
                        "%d more public %s connections refused or evicted in the last %g s "
                        "(each port: %d waiting for their head at most, %d per source)",
                        n,
                        "TLS" if tls else "HTTP",
                        budget.interval,
                        self.config.max_pending,
                        self.config.max_pending_per_source,
                    )

    def _flood_line(self, tls: bool, what: str, *args: object) -> None:
        """A refusal or eviction: one WARNING line, the rest counted (`LogBudget`)."""
        budget = self.refusal_log[tls]
        if budget.allow(trio.current_time()):
            log.warning(
                what + " (more within %g s are counted, not logged)", *args, budget.interval
            )

    async def _accept_loop(
        self, listener: trio.SocketListener, tls: bool, nursery: trio.Nursery
    ) -> None:
        async with listener:
            while True:
                try:
                    tsock, addr = await listener.socket.accept()
                except OSError as exc:
                    log.warning("public accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                peer = format_addr(addr)
                key = source_key(str(addr[0])) if isinstance(addr, tuple) else str(addr)
                table = self.tables[tls]
                slot = EvictableScope()
                evicted = table.evicted
                refused = table.admit(key, slot)
                if refused is not None:
                    self.rejected += 1
                    tsock.close()
                    self._flood_line(tls, "public connection from %s refused: %s", peer, refused)
                    continue
                if table.evicted != evicted:
                    self._flood_line(
                        tls,
                        "public connection waiting longest for its head closed to make room "
                        "for %s: %d waiting",
                        peer,
                        table.count,
                    )
                nursery.start_soon(self._handle, tsock, peer, tls, key, slot)

    async def _handle(
        self, tsock: trio.socket.SocketType, peer: str, tls: bool, key: str, slot: EvictableScope
    ) -> None:
        try:
            with slot.scope:
                try:
                    decision = await read_head(self.config, self.domain, tsock, tls)
                finally:
                    self.tables[tls].remove(key, slot)  # a no-op once evicted
            if slot.scope.cancelled_caught:
                log.debug("public connection from %s evicted before its head", peer)
                return
            if isinstance(decision, Route):
                runner = self.routes.get(decision.name)
                want = ROUTE_TLS if tls else ROUTE_HTTP
                if runner is not None and runner.route_bits & want and not runner.session.closed:
                    conn = plain_socket(tsock)  # tsock is empty from here on
                    if not runner.adopt(conn, peer, decision.preface):
                        close_plain(conn, reset=True)
                    return
                decision = self._unrouted(decision, tls)
            await self._refuse(tsock, peer, decision)
        finally:
            tsock.close()  # cancelled, refused (or already handed over: then a no-op)

    def _unrouted(self, route: Route, tls: bool) -> Reject:
        if tls:
            return Reject(ALERT_UNRECOGNIZED_NAME, "no such name", alert(ALERT_UNRECOGNIZED_NAME))
        if self.names.leased(route.name, trio.current_time()):
            return offline(route.host)
        return not_found(route.host)

    async def _refuse(self, tsock: trio.socket.SocketType, peer: str, decision: Reject) -> None:
        self.rejected += 1
        log.debug("public connection from %s refused: %s", peer, decision.reason)
        with trio.move_on_after(REJECT_SEND_TIME):
            view = memoryview(decision.response)
            try:
                while view:
                    view = view[await tsock.send(view) :]
                tsock.shutdown(socket.SHUT_WR)
                # read what the client still sends (bounded), so closing does not reset
                # the connection before it read the page
                for _ in range(16):
                    if not await tsock.recv(16384):
                        break
            except OSError:
                pass


async def read_head(
    cfg: RoutingConfig, domain: str, tsock: trio.socket.SocketType, tls: bool
) -> Route | Reject:
    """Read until the head (or ClientHello) decides, or its deadline passes."""
    now = trio.current_time()
    reader: HeadReader | SniReader
    if tls:
        reader = SniReader(domain, now, max_hello=cfg.max_head, timeout=cfg.head_timeout)
    else:
        reader = HeadReader(domain, now, max_head=cfg.max_head, timeout=cfg.head_timeout)
    with trio.move_on_at(reader.deadline):
        while True:
            try:
                data = await tsock.recv(16384)
            except OSError:
                data = b""
            decision = reader.receive_data(data, trio.current_time())
            if decision is not None:
                return decision
    late = reader.handle_timer(trio.current_time())
    assert late is not None
    return late


async def bind_name(
    router: NameRouter | None,
    runner: RelayRunner,
    name: str,
    routes: int,
    replace_previous: Callable[[], Awaitable[None]],
) -> None:
    """A named bind: lease `name` to the runner's client, route it there and answer
    BIND_OK, or BIND_ERR saying why not. No port is opened."""
    owner = runner.owner
    assert owner is not None
    why = "this relay does not route by name (no --domain)"
    try:
        if router is not None:
            if routes & ROUTE_HTTP and not router.http_port:
                raise NameUnavailable("this relay routes no HTTP (no --http-addr)")
            if routes & ROUTE_TLS and not router.https_port:
                raise NameUnavailable("this relay routes no TLS (no --https-addr)")
            if router.names.assign(owner, name, trio.current_time()):
                await replace_previous()  # our previous session still held it
                router.names.assign(owner, name, trio.current_time())
            why = ""
    except NameUnavailable as exc:
        why = str(exc)
    session = runner.session
    if session.closed:
        if router is not None and not why:
            router.names.release(name, owner, trio.current_time())  # kept for a reconnect
        return
    if why or router is None:
        log.info("client %s: bind of %r refused: %s", runner.name, name, why)
        session.reject_bind(why)
    else:
        router.routes[name] = runner
        runner.route_name, runner.route_bits = name, routes
        runner.relay.by_owner[owner] = runner
        session.accept_bind(
            0,
            int(runner.relay.config.lease),
            host=router.host(name),
            http_port=router.http_port if routes & ROUTE_HTTP else 0,
            https_port=router.https_port if routes & ROUTE_TLS else 0,
        )
        log.info("client %s bound to %s", runner.name, router.host(name))
    runner.dispatch()
    runner.ring()
