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
from dataclasses import dataclass, field

import trio

from trivpn.errors import ConfigError
from trivpn.reverse import session as S
from trivpn.reverse.frames import ErrorCode
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.ports import Owner, PortAllocator, PortUnavailable
from trivpn.reverse.service import (
    SessionRunner,
    StreamPipe,
    close_plain,
    format_addr,
    peer_name,
    plain_socket,
)
from trivpn.reverse.session import SessionConfig, StreamClosedError

log = logging.getLogger("trivpn.reverse")

TAKEOVER_WAIT = 3.0
TLS_HANDSHAKE_TIMEOUT = 10.0


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
    observe_http: bool = True
    session: SessionConfig = field(default_factory=SessionConfig)


def load_tokens(path: str) -> dict[str, bytes]:
    """A tokens file: one `name:token` (or bare token) a line; '#' starts a comment."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the tokens file {path}: {exc.strerror}") from None
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
        self.allocator = PortAllocator(config.start_port, config.end_port, config.lease)
        self.by_owner: dict[Owner, RelayRunner] = {}
        self.live: dict[str, list[Metrics]] = {}
        self.totals: dict[str, Metrics] = {}
        self.tunnel_port = config.port
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
            m.started = min((x.started for x in ms), default=m.started)
            parts.append(m.summary(f"client {name}"))
        return "\n".join(parts) if parts else "── relay ── no client connected"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen for tunnel connections; reports the bound tunnel port once listening."""
        cfg = self.config
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
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, nursery)
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
        transport: trio.abc.Stream = conn
        try:
            if self._ssl is not None:
                tls = trio.SSLStream(conn, self._ssl, server_side=True)
                with trio.move_on_after(TLS_HANDSHAKE_TIMEOUT) as scope:
                    await tls.do_handshake()
                if scope.cancelled_caught:
                    raise trio.BrokenResourceError("TLS handshake timed out")
                transport = tls
            session = S.Session(
                "relay", trio.current_time(), self.config.session, tokens=self.config.tokens
            )
            runner = RelayRunner(self, session, transport, peer)
            await runner.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError) as exc:
            log.info("tunnel connection from %s failed: %s", peer, exc)
            await trio.aclose_forcefully(transport)
        except Exception:  # one broken session must never take the relay down
            log.exception("internal error in the session from %s", peer)
            await trio.aclose_forcefully(transport)


class RelayRunner(SessionRunner):
    def __init__(
        self, relay: Relay, session: S.Session, transport: trio.abc.Stream, peer: str
    ) -> None:
        super().__init__(session, transport, Metrics(), observe_http=relay.config.observe_http)
        self.relay = relay
        self.peer = peer
        self.name = ""
        self.owner: Owner | None = None
        self.port = 0

    async def run(self) -> S.SessionClosed | None:
        try:
            return await super().run()
        finally:
            self._unregister()

    def _unregister(self) -> None:
        relay = self.relay
        if self.owner is not None:
            if self.port:
                relay.allocator.release(self.port, self.owner, trio.current_time())
                log.info(
                    "client %s left; port %d leased to it for %g s",
                    self.name,
                    self.port,
                    relay.config.lease,
                )
            if relay.by_owner.get(self.owner) is self:
                del relay.by_owner[self.owner]
        if self.name:
            live = relay.live.get(self.name, [])
            if self.metrics in live:
                live.remove(self.metrics)
            relay.totals.setdefault(self.name, Metrics(state="TOTAL")).add(self.metrics)

    def on_event(self, ev: S.Event) -> None:
        if isinstance(ev, S.Authenticated):
            self.name = ev.name
            self.owner = (ev.name, ev.client_id)
            self.metrics.connections = 1
            self.relay.live.setdefault(ev.name, []).append(self.metrics)
            log.info("client %s authenticated from %s", ev.name, self.peer)
        elif isinstance(ev, S.BindRequested):
            assert self.nursery is not None
            self.nursery.start_soon(self._bind, ev.port)

    def on_stream_reset(self, ev: S.StreamReset) -> None:
        if ev.by_peer and ev.code == ErrorCode.REFUSED:
            self.metrics.streams_refused += 1

    async def _bind(self, requested: int) -> None:
        relay = self.relay
        assert self.owner is not None and self.nursery is not None
        exclude: set[int] = set()
        for _ in range(64):
            try:
                port, takeover = relay.allocator.assign(
                    self.owner, requested, trio.current_time(), frozenset(exclude)
                )
            except PortUnavailable as exc:
                log.info("client %s: bind refused: %s", self.name, exc)
                self.session.reject_bind(str(exc))
                self.dispatch()
                self.ring()
                return
            if takeover:
                old = relay.by_owner.get(self.owner)
                if old is not None and old is not self:
                    log.info("client %s reconnected: replacing its previous session", self.name)
                    old.session.close(
                        "replaced by a new connection of the same client", ErrorCode.REPLACED
                    )
                    old.dispatch()
                    old.ring()
                    with trio.move_on_after(TAKEOVER_WAIT) as scope:
                        await old.done.wait()
                    if scope.cancelled_caught and old.nursery is not None:
                        old.nursery.cancel_scope.cancel()
                        await old.done.wait()
                    relay.allocator.assign(self.owner, port, trio.current_time())
            host = (
                relay.config.public_host
                if relay.config.public_host is not None
                else relay.config.host
            )
            try:
                listeners = await trio.open_tcp_listeners(port, host=host or None)
            except OSError as exc:
                relay.allocator.forget(port)
                if exc.errno == errno.EADDRINUSE and not requested:
                    exclude.add(port)
                    continue
                self.session.reject_bind(f"port {port}: {exc.strerror}")
                self.dispatch()
                self.ring()
                return
            break
        else:
            self.session.reject_bind("no free port")
            self.dispatch()
            self.ring()
            return
        if self.session.closed:
            for lst in listeners:
                await lst.aclose()
            relay.allocator.forget(port)
            return
        self.port = port
        relay.by_owner[self.owner] = self
        self.session.accept_bind(port, int(relay.config.lease))
        self.dispatch()
        self.ring()
        log.info("client %s bound to public port %d", self.name, port)
        for lst in listeners:
            self.nursery.start_soon(self._public_accept, lst)

    async def _public_accept(self, listener: trio.SocketListener) -> None:
        async with listener:
            while True:
                try:
                    tsock, addr = await listener.socket.accept()
                except OSError as exc:
                    log.warning("public accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                conn = plain_socket(tsock)
                peer = format_addr(addr)
                try:
                    sid = self.session.open_stream(peer, trio.current_time())
                except StreamClosedError as exc:
                    log.info("refusing public connection from %s: %s", peer, exc)
                    close_plain(conn, reset=True)
                    continue
                pipe = StreamPipe(self, sid, peer, self.observe_http, requests_from_socket=True)
                self.pipes[sid] = pipe
                self.flush()
                assert self.nursery is not None

                async def opener(conn: socket.socket = conn) -> socket.socket:
                    return conn

                self.nursery.start_soon(self.run_pipe, pipe, opener)
