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
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from trivpn.errors import ConfigError, FatalError
from trivpn.reverse import connection
from trivpn.reverse import events as E
from trivpn.reverse.config import SessionConfig
from trivpn.reverse.frames import ErrorCode
from trivpn.reverse.handshake import TAKEOVER_REFUSED
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.pipe import StreamPipe
from trivpn.reverse.ports import Backoff
from trivpn.reverse.service import SessionRunner
from trivpn.reverse.session import Session
from trivpn.reverse.sockets import connect_plain

log = logging.getLogger("trivpn.reverse")

DIAL_TIMEOUT = 10.0


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
    session: SessionConfig = field(default_factory=SessionConfig)


class Expose:
    def __init__(
        self, config: ExposeConfig, on_bound: Callable[[str, int], None] | None = None
    ) -> None:
        if not config.token:
            raise ConfigError("--token must not be empty")
        self.config = config
        self.client_id = secrets.token_bytes(16)
        self.takeover_key = secrets.token_bytes(32)  # revealed to take over our own session
        self.metrics = Metrics()  # whole-run totals
        self.session_metrics: Metrics | None = None
        self.runner: ExposeRunner | None = None  # the current (or last) session
        self.port = 0
        self.sessions = 0
        self.on_bound = on_bound
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
        wanted = cfg.remote_port
        while True:
            why = ""
            try:
                tunnel = await self._connect()
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                why = f"cannot reach the relay {cfg.server_host}:{cfg.server_port}: " + (
                    "timed out"
                    if isinstance(exc, trio.TooSlowError)
                    else str(getattr(exc, "strerror", None) or exc)
                )
            else:
                next_key = secrets.token_bytes(32)
                session = Session(
                    "client",
                    trio.current_time(),
                    cfg.session,
                    token=cfg.token,
                    client_id=self.client_id,
                    requested_port=wanted,
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
                if runner.bind_failed:
                    if TAKEOVER_REFUSED in runner.bind_failed:
                        # our last BIND_OK was lost, or another client claims our id:
                        # start over as a new client (a new port)
                        self.client_id = secrets.token_bytes(16)
                        self.takeover_key = secrets.token_bytes(32)
                    elif wanted and wanted == cfg.remote_port:
                        raise FatalError(runner.bind_failed)
                    wanted = 0  # our remembered port went to someone else: take any
                if runner.bound_port:
                    wanted = runner.bound_port
                    if trio.current_time() - runner.bound_at >= cfg.stable_after:
                        backoff.reset()
                    log.info("tunnel lost: %s", closed.reason if closed else "closed")
                    print(metrics.summary("session summary"), flush=True)
                why = closed.reason if closed else "the tunnel closed"
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
        self.bound_port = 0
        self.bound_at = 0.0
        self.relay_proven = False  # AUTH_OK carried the relay's proof of the token
        self.bind_failed: str | None = None
        self.next_key = next_key  # ours once bound: the relay keeps its commitment

    def on_event(self, ev: E.Event) -> None:
        if isinstance(ev, E.Authenticated):
            self.relay_proven = True
        elif isinstance(ev, E.Bound):
            self.bound_port = ev.port
            self.bound_at = trio.current_time()
            if self.next_key:
                self.expose.takeover_key = self.next_key
            self.expose.port = ev.port
            self.expose.sessions += 1
            self.metrics.connections = 1
            cfg = self.expose.config
            log.info(
                "public address %s:%d -> %s:%d (lease %d s)",
                cfg.server_host,
                ev.port,
                cfg.local_host,
                cfg.local_port,
                ev.lease,
            )
            if self.expose.on_bound is not None:
                self.expose.on_bound(cfg.server_host, ev.port)
        elif isinstance(ev, E.BindFailed):
            self.bind_failed = ev.reason
        elif isinstance(ev, E.StreamOpened):
            pipe = StreamPipe(
                self, ev.stream_id, ev.peer, self.observe_http, requests_from_socket=False
            )
            self.pipes[ev.stream_id] = pipe
            assert self.nursery is not None
            self.nursery.start_soon(self.run_pipe, pipe, self._dialer(pipe))

    def _dialer(self, pipe: StreamPipe) -> Callable[[], Awaitable[socket.socket]]:
        cfg = self.expose.config

        async def dial() -> socket.socket:
            try:
                with trio.fail_after(DIAL_TIMEOUT):
                    return await connect_plain(cfg.local_host, cfg.local_port)
            except (OSError, trio.TooSlowError) as exc:
                self.metrics.streams_refused += 1
                log.info(
                    "stream %d from %s: local service %s:%d unreachable: %s",
                    pipe.sid,
                    pipe.peer,
                    cfg.local_host,
                    cfg.local_port,
                    "timed out"
                    if isinstance(exc, trio.TooSlowError)
                    else getattr(exc, "strerror", exc),
                )
                self.session.reset_stream(pipe.sid, ErrorCode.REFUSED)
                self.flush()
                raise trio.BrokenResourceError("local service unreachable") from None

        return dial

    def opened(self, pipe: StreamPipe) -> None:
        self.session.accept_stream(pipe.sid)
        self.flush()
