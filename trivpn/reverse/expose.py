"""`trivpn expose`: the side behind NAT. Keeps a tunnel to the relay and connects each
stream the relay opens to the local service.

Reconnect policy: after a lost connection (or a failed attempt) wait 1 s, doubling to
30 s, with jitter, at most `attempts` tries in a row (0 = forever); a session that reached
BOUND and then lived `stable_after` seconds resets the count (one that got a port and died
within seconds counts as a failure, so a relay that drops every session cannot make it
reconnect without end). The client keeps one random client id for its whole life and asks
for the port it had before, so the relay gives the same public port back (from its lease,
or simply because the port is still free after a relay restart).
TLS verification failures are not retried: an untrusted certificate cannot become trusted.
An authentication failure (AUTH_ERR) is retried with the backoff like a lost connection:
the relay cannot prove anything when it refuses our token, so a fake relay (or anyone on
the path of a plain-TCP tunnel) must not be able to make us quit for good; a really wrong
token still ends the run once the attempts are used up. Being replaced by another copy of
ourselves (GOAWAY(REPLACED)) is final, but only from a relay that proved it knows the
token (AUTH_OK) and gave us the takeover secret.
"""

from __future__ import annotations

import logging
import random
import re
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import field

import trio

from trivpn.errors import ConfigError, FatalError
from trivpn.records import dataclass
from trivpn.reverse import connection
from trivpn.reverse import events as E
from trivpn.reverse.config import SessionConfig
from trivpn.reverse.events import Binding
from trivpn.reverse.frames import ErrorCode
from trivpn.reverse.handshake import RELAY_SILENT, RELAY_SPEAKS_TLS, TAKEOVER_REFUSED
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.pipe import StreamPipe
from trivpn.reverse.ports import Backoff
from trivpn.reverse.service import SessionRunner
from trivpn.reverse.session import Session
from trivpn.reverse.sockets import connect_plain

log = logging.getLogger("trivpn.reverse")

DIAL_TIMEOUT = 10.0


@dataclass(slots=True)
class TunnelConfig:
    """One local service behind one public port; several share one tunnel connection."""

    local_host: str
    local_port: int
    remote_port: int = 0  # 0 = any
    label: str = ""  # for the log (lowercase letters, digits, '-')


@dataclass(slots=True)
class ExposeConfig:
    server_host: str
    server_port: int
    local_host: str
    local_port: int
    token: bytes
    remote_port: int = 0
    tls: bool = False
    tls_ca: str | None = None
    tls_server_name: str | None = None  # default: server_host, the name we dialled
    reconnect: bool = True
    attempts: int = 10
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    stable_after: float = 10.0  # a bound session this old resets the backoff
    observe_http: bool = True
    log_query: bool = False  # request log: show query strings (redacted by default)
    subdomain: str = ""  # a named bind (relay --domain): routed by Host / SNI, no port
    routes: int = 0  # http.names.ROUTE_HTTP | ROUTE_TLS, with a subdomain
    session: SessionConfig = field(default_factory=SessionConfig)
    tunnels: list[TunnelConfig] = field(default_factory=list)  # empty: the local_* above

    def all_tunnels(self) -> list[TunnelConfig]:
        return self.tunnels or [TunnelConfig(self.local_host, self.local_port, self.remote_port)]


class Expose:
    def __init__(
        self, config: ExposeConfig, on_bound: Callable[[str, int], None] | None = None
    ) -> None:
        if not config.token:
            raise ConfigError("--token must not be empty")
        self.tunnels = config.all_tunnels()
        if config.subdomain and len(self.tunnels) > 1:
            raise ConfigError("a named (--subdomain/--http/--https) tunnel needs its own expose")
        self.config = config
        self.client_id = secrets.token_bytes(16)
        self.takeover_key = secrets.token_bytes(32)  # revealed to take over our own session
        self.metrics = Metrics()  # whole-run totals
        self.session_metrics: Metrics | None = None
        self.runner: ExposeRunner | None = None  # the current (or last) session
        self.port = 0  # the first tunnel's public port
        self.ports: list[int] = []  # one per tunnel
        self.urls: list[str] = []  # a named bind's public URLs
        self.sessions = 0
        self.on_bound = on_bound
        #: builds each stream's pipe; the inspector (http/inspectsrv.py) swaps in its own
        self.pipe_factory: Callable[[SessionRunner, int, str, bool, bool], StreamPipe] = StreamPipe
        self._ssl: ssl.SSLContext | None = None
        if config.tls or config.tls_ca:
            try:
                ctx = ssl.create_default_context(cafile=config.tls_ca)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot load the CA file {config.tls_ca}: {exc}") from None
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._ssl = ctx

    async def _connect(self) -> connection.Connection:
        cfg = self.config
        name = cfg.tls_server_name or cfg.server_host
        return await connection.dial(cfg.server_host, cfg.server_port, self._ssl, name)

    async def run(self) -> None:
        """Until cancelled, or a FatalError (auth refused, gave up reconnecting, ...)."""
        cfg = self.config
        backoff = Backoff(cfg.backoff_initial, cfg.backoff_max, cfg.attempts)
        configured = [t.remote_port for t in self.tunnels]
        wanted = list(configured)
        while True:
            why = ""
            try:
                tunnel = await self._connect()
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                why = f"cannot reach the relay {cfg.server_host}:{cfg.server_port}: " + (
                    dial_failure(exc)
                )
            else:
                next_key = secrets.token_bytes(32)
                session = Session(
                    "client",
                    trio.current_time(),
                    cfg.session,
                    token=cfg.token,
                    client_id=self.client_id,
                    requested_name=cfg.subdomain,
                    routes=cfg.routes if cfg.subdomain else 0,
                    bindings=tuple(
                        Binding(w, t.label) for w, t in zip(wanted, self.tunnels, strict=True)
                    ),
                    resume_key=self.takeover_key,
                    next_key=next_key,
                )
                metrics = Metrics()
                self.session_metrics = metrics
                runner = ExposeRunner(self, session, tunnel, metrics, next_key)
                self.runner = runner
                try:
                    closed = await runner.run()
                finally:
                    self.metrics.add(metrics)
                    self.metrics.state = metrics.state
                if runner.auth_failed:
                    # AUTH_ERR proves nothing: anyone on the path can send it, so it is
                    # retried with backoff (the attempts bound still ends a wrong token)
                    log.error("%s (retrying: a refusal proves nothing)", runner.auth_failed)
                if session.protocol > 1 and _refused_protocol_2(closed):
                    raise FatalError(
                        "the relay speaks only protocol 1 (one tunnel per connection);"
                        " several tunnels need a newer relay"
                    )
                if runner.bind_failed:
                    if TAKEOVER_REFUSED in runner.bind_failed:
                        # our last BIND_OK was lost, or another client claims our id:
                        # start over as a new client (new ports)
                        self.client_id = secrets.token_bytes(16)
                        self.takeover_key = secrets.token_bytes(32)
                    elif cfg.subdomain or (any(configured) and wanted == configured):
                        raise FatalError(runner.bind_failed)
                    wanted = list(configured)  # a remembered port went to someone else
                if runner.bound:
                    if runner.bound_port:
                        wanted = list(runner.bound_ports)
                    if trio.current_time() - runner.bound_at >= cfg.stable_after:
                        backoff.reset()
                    log.info("tunnel lost: %s", closed.reason if closed else "closed")
                    print(metrics.summary("session summary"), flush=True)
                why = unanswered(closed.reason, self._ssl is not None) if closed else ""
                why = why or "the tunnel closed"
                replaced = closed is not None and closed.code == ErrorCode.REPLACED
                if replaced and runner.relay_proven:
                    raise FatalError("another expose with the same identity replaced this one")
            if not cfg.reconnect:
                raise FatalError(f"{why} (not reconnecting: --no-reconnect)")
            delay = backoff.next_delay(random.random())
            if delay is None:
                raise FatalError(f"{why}; gave up after {cfg.attempts} attempts")
            limit = f"/{cfg.attempts}" if cfg.attempts else ""
            log.info(
                "%s; reconnecting in %.1f s (attempt %d%s)", why, delay, backoff.failures, limit
            )
            await trio.sleep(delay)


#: what OpenSSL says when the answer to our ClientHello is not TLS at all
_NOT_TLS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG")


def dial_failure(exc: BaseException) -> str:
    """Why dialling the relay failed, in words. A failed TLS handshake is a trio
    BrokenResourceError whose str() is empty; its cause, an ssl.SSLError, says what
    happened (a plain-TCP relay answers our ClientHello with frames, not TLS)."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return "the TLS handshake failed: the relay closed the connection"
    if isinstance(cause, ssl.SSLError):
        if cause.reason in _NOT_TLS:
            return (
                "the TLS handshake failed: the relay did not answer in TLS"
                " (does it serve plain TCP? then leave out --tls)"
            )
        text = str(cause.args[1] if len(cause.args) > 1 else cause)  # "[SSL: X] text (_ssl.c:N)"
        text = re.sub(r"^\[[^]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", text)
        return f"the TLS handshake failed: {text or cause.reason or type(cause).__name__}"
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    return str(exc) or "the connection broke"


def unanswered(reason: str, tls: bool) -> str:
    """`reason`, and what to check when the relay never answered our HELLO: the usual
    cause is TLS on one side only (the other way round, see `dial_failure`)."""
    if reason == RELAY_SPEAKS_TLS:
        return (
            f"{reason}: it serves the tunnel over TLS (add --tls, and --tls-ca FILE if its"
            " certificate is not from a public CA)"
        )
    if reason == RELAY_SILENT:
        may = "" if tls else "expect TLS (add --tls), "
        return (
            f"{reason}: it may {may}refuse this address after failed logins (check the"
            " token), or --server may not be its tunnel port"
        )
    return reason


def public_urls(host: str, http_port: int, https_port: int) -> list[str]:
    """A named bind's addresses, without the scheme's default port."""
    urls = []
    if http_port:
        urls.append(f"http://{host}" + ("" if http_port == 80 else f":{http_port}"))
    if https_port:
        urls.append(f"https://{host}" + ("" if https_port == 443 else f":{https_port}"))
    return urls


def _refused_protocol_2(closed: E.SessionClosed | None) -> bool:
    """A protocol-1 relay's answer to our extended HELLO (GOAWAY naming its size)."""
    return (
        closed is not None
        and closed.by_peer
        and closed.code == ErrorCode.PROTOCOL
        and "HELLO frame of 42 bytes" in closed.reason
    )


class ExposeRunner(SessionRunner):
    def __init__(
        self,
        expose: Expose,
        session: Session,
        tunnel: connection.Connection,
        metrics: Metrics,
        next_key: bytes = b"",
    ) -> None:
        super().__init__(
            session,
            tunnel,
            metrics,
            observe_http=expose.config.observe_http,
            log_query=expose.config.log_query,
        )
        self.expose = expose
        self.bound = False
        self.bound_port = 0
        self.bound_ports: tuple[int, ...] = ()
        self.bound_at = 0.0
        self.relay_proven = False  # AUTH_OK carried the relay's proof of the token
        self.bind_failed: str | None = None
        self.next_key = next_key  # ours once bound: the relay keeps its commitment

    def on_event(self, ev: E.Event) -> None:
        if isinstance(ev, E.Authenticated):
            self.relay_proven = True
        elif isinstance(ev, E.Bound):
            self.bound = True
            ports = ev.ports or (ev.port,)
            self.bound_port, self.bound_ports = ev.port, ports
            self.bound_at = trio.current_time()
            if self.next_key:
                self.expose.takeover_key = self.next_key
            self.expose.port, self.expose.ports = ev.port, list(ports)
            self.expose.sessions += 1
            self.metrics.connections = 1
            host = self.expose.config.server_host
            if ev.host:  # a named bind: URLs on the relay's shared ports
                host, ports = ev.host, (ev.http_port or ev.https_port,)
                self.expose.urls = public_urls(ev.host, ev.http_port, ev.https_port)
            for t, port in zip(self.expose.tunnels, ports, strict=True):
                log.info(
                    "public address %s -> %s:%d%s (lease %d s)",
                    ", ".join(self.expose.urls) if ev.host else f"{host}:{port}",
                    t.local_host,
                    t.local_port,
                    f" [{t.label}]" if t.label else "",
                    ev.lease,
                )
                if self.expose.on_bound is not None:
                    self.expose.on_bound(host, port)
        elif isinstance(ev, E.BindFailed):
            self.bind_failed = ev.reason
        elif isinstance(ev, E.StreamOpened):
            pipe = self.expose.pipe_factory(self, ev.stream_id, ev.peer, self.observe_http, False)
            self.pipes[ev.stream_id] = pipe
            assert self.nursery is not None
            self.nursery.start_soon(self.run_pipe, pipe, self._dialer(pipe, ev.binding))

    def _dialer(self, pipe: StreamPipe, binding: int) -> Callable[[], Awaitable[socket.socket]]:
        tunnels = self.expose.tunnels
        cfg = tunnels[binding] if binding < len(tunnels) else None

        async def dial() -> socket.socket:
            try:
                if cfg is None:
                    raise OSError(f"the relay named tunnel {binding + 1}, we have {len(tunnels)}")
                with trio.fail_after(DIAL_TIMEOUT):
                    return await connect_plain(cfg.local_host, cfg.local_port)
            except (OSError, trio.TooSlowError) as exc:
                self.metrics.streams_refused += 1
                log.info(
                    "stream %d from %s: local service %s unreachable: %s",
                    pipe.sid,
                    pipe.peer,
                    f"{cfg.local_host}:{cfg.local_port}" if cfg else "?",
                    "timed out"
                    if isinstance(exc, trio.TooSlowError)
                    else getattr(exc, "strerror", None) or exc,
                )
                self.session.reset_stream(pipe.sid, ErrorCode.REFUSED)
                self.flush()
                raise trio.BrokenResourceError("local service unreachable") from None

        return dial

    def opened(self, pipe: StreamPipe) -> None:
        self.session.accept_stream(pipe.sid)
        self.flush()
