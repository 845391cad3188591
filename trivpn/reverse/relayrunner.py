"""One authenticated tunnel session on the relay, and the public ports it is bound to.

`Relay` (relay.py) accepts and authenticates tunnel connections; each then runs as a
`RelayRunner`. On AUTH it registers under its token name; on BIND it gets its public
ports (`_bind`: one per binding, all or none) or its subdomain (`_bind_name`, through the
`NameRouter`), and runs one accept loop per public listener. Every public connection,
accepted here or routed by name, becomes a stream of the session (`adopt`); one the
session cannot carry (`max_streams`, closing) is reset and counted, never queued.

A client that reconnects while its old session lingers takes over explicitly
(`_replace_previous`): the old session is told GOAWAY(REPLACED) and its listener closed
*before* the new one binds, so a stale connection can never hold a port hostage (bore
#125), and the wait for it is bounded (`TAKEOVER_WAIT`, frp #3543). When the session
ends its ports and name stay leased to the client (`_unregister`).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from typing import TYPE_CHECKING

import trio

from trivpn.reverse import connection
from trivpn.reverse import events as E
from trivpn.reverse.bucket import Shaper
from trivpn.reverse.events import StreamClosedError
from trivpn.reverse.frames import ErrorCode
from trivpn.reverse.http.router import bind_name
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.pipe import StreamPipe
from trivpn.reverse.ports import Owner, PortUnavailable
from trivpn.reverse.service import SessionRunner
from trivpn.reverse.session import Session
from trivpn.reverse.sockets import EvictableScope, close_plain, format_addr, plain_socket

if TYPE_CHECKING:
    from trivpn.reverse.relay import Relay

log = logging.getLogger("trivpn.reverse")

TAKEOVER_WAIT = 3.0


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
