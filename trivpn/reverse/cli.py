"""`trivpn relay` and `trivpn expose` sub-commands (plugged into trivpn.cli).

Only argparse at import time: the tunnel modules load inside the handlers, so other
commands start as fast as before.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trivpn.reverse.config import SessionConfig

log = logging.getLogger("trivpn.reverse")

MIN_TOKEN = 16  # bytes; shorter shared secrets are guessable by an online attacker
TOKEN_ENV = "TRIVPN_TOKEN"
TOKEN_HINT = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"


def _token_options(g: argparse._ActionsContainer, help_token: str) -> None:
    g.add_argument(
        "--token", metavar="T", help=f"{help_token} (visible in ps; prefer ${TOKEN_ENV})"
    )
    g.add_argument("--token-file", metavar="F", help="read the token from this file (first line)")


def resolve_token(args: argparse.Namespace) -> bytes:
    """The token from --token, --token-file or $TRIVPN_TOKEN, at least 16 bytes."""
    from trivpn.errors import ConfigError

    token: str
    if args.token is not None:
        token, what = str(args.token), "--token"
    elif getattr(args, "token_file", None):
        try:
            with open(args.token_file, encoding="utf-8") as fh:
                token = fh.readline().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read --token-file {args.token_file}: {exc.strerror}"
            ) from None
        what = "--token-file"
    else:
        token, what = os.environ.get(TOKEN_ENV, ""), f"${TOKEN_ENV}"
    check_token(token.encode(), what)
    return token.encode()


def check_token(token: bytes, what: str) -> None:
    from trivpn.errors import ConfigError

    if not token:
        raise ConfigError(f"{what}: the token must not be empty")
    if len(token) < MIN_TOKEN:
        raise ConfigError(
            f"{what}: the token is {len(token)} bytes, at least {MIN_TOKEN} needed; {TOKEN_HINT}"
        )


def _size(text: str) -> int:
    """BYTES, or with a K/M/G suffix (powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    try:
        return int(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16M)") from None


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-v", "--verbose", action="count", default=0, help="more detail")
    sp.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sp.add_argument(
        "--max-frame",
        type=int,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="largest frame payload accepted after authentication (default 16 MiB)",
    )
    sp.add_argument(
        "--window",
        type=int,
        default=2 * 1024 * 1024,
        metavar="BYTES",
        help="per-stream receive window (default 2 MiB: about 1 Gbit/s at 16 ms RTT)",
    )
    sp.add_argument(
        "--session-buffer",
        type=_size,
        default=16 * 1024 * 1024,
        metavar="BYTES",
        help="received bytes a tunnel may hold for readers that are slow (default 16 MiB)",
    )
    sp.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="reset a connection whose reader takes nothing for this long (default 60)",
    )
    sp.add_argument(
        "--no-http-log", action="store_true", help="do not parse HTTP for the request log"
    )
    sp.add_argument(
        "--log-query",
        action="store_true",
        help="show query strings in the HTTP request log (redacted by default)",
    )


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: object) -> None:
    r = sub.add_parser("relay", help="public side of a reverse TCP tunnel")
    r.add_argument(
        "--addr", default=":9000", metavar="HOST:PORT", help="tunnel listen address (default :9000)"
    )
    r.add_argument(
        "--start-port",
        type=int,
        default=10000,
        metavar="N",
        help="first public port (default 10000)",
    )
    r.add_argument(
        "--end-port", type=int, default=None, metavar="M", help="last public port (default N+999)"
    )
    r.add_argument(
        "--public-host",
        default=None,
        metavar="HOST",
        help="address the public ports bind (default: --addr's host)",
    )
    # a token is required unless $TRIVPN_TOKEN holds it
    g = r.add_mutually_exclusive_group(required=TOKEN_ENV not in os.environ)
    _token_options(g, "the shared token clients authenticate with")
    g.add_argument(
        "--tokens-file", metavar="F", help="one name:token per line (per-client tokens and metrics)"
    )
    r.add_argument(
        "--tls-cert", metavar="F", help="serve the tunnel over TLS with this certificate (PEM)"
    )
    r.add_argument("--tls-key", metavar="F", help="private key of --tls-cert (PEM)")
    r.add_argument(
        "--metrics-addr",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics",
    )
    r.add_argument(
        "--lease",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="keep a client's port this long after it leaves (default 60)",
    )
    r.add_argument(
        "--relay-buffer",
        type=_size,
        default=256 * 1024 * 1024,
        metavar="BYTES",
        help="received bytes all tunnels together may hold (default 256 MiB)",
    )
    r.add_argument(
        "--heartbeat",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="heartbeat interval; 3 missed expire a session (default 10)",
    )
    _common(r)
    r.set_defaults(handler=cmd_relay)

    e = sub.add_parser("expose", help="expose a local TCP service through a relay")
    e.add_argument(
        "--server", required=True, metavar="HOST:PORT", help="the relay's tunnel address"
    )
    e.add_argument(
        "--local", required=True, metavar="HOST:PORT", help="the local service to expose"
    )
    eg = e.add_mutually_exclusive_group(required=TOKEN_ENV not in os.environ)
    _token_options(eg, "the token the relay knows")
    e.add_argument(
        "--tls", action="store_true", help="connect with TLS, verifying the relay's certificate"
    )
    e.add_argument(
        "--tls-ca", metavar="F", help="CA certificate(s) to verify the relay with (implies --tls)"
    )
    e.add_argument(
        "--tls-server-name", metavar="NAME", help="name to verify instead of --server's host"
    )
    e.add_argument(
        "--remote-port",
        type=int,
        default=0,
        metavar="N",
        help="ask for this public port (default: any)",
    )
    e.add_argument("--no-reconnect", action="store_true", help="exit when the tunnel is lost")
    e.add_argument(
        "--max-attempts",
        type=int,
        default=10,
        metavar="N",
        help="reconnect attempts in a row, 0 = forever (default 10)",
    )
    _common(e)
    e.set_defaults(handler=cmd_expose)


def _session_config(args: argparse.Namespace, heartbeat: float = 10.0) -> SessionConfig:
    from trivpn.errors import ConfigError
    from trivpn.reverse.config import MAX_WINDOW, SessionConfig
    from trivpn.reverse.frames import ABSOLUTE_MAX_FRAME

    if not 256 <= args.max_frame <= ABSOLUTE_MAX_FRAME:
        raise ConfigError(f"--max-frame must be between 256 and {ABSOLUTE_MAX_FRAME}")
    if not 1024 <= args.window <= MAX_WINDOW:
        raise ConfigError("--window must be between 1024 and 2147483647")
    if not 0.05 <= heartbeat <= 3600:
        raise ConfigError("--heartbeat must be between 0.05 and 3600 seconds")
    if args.session_buffer < 64 * 1024:
        raise ConfigError("--session-buffer must be at least 64K")
    if not 0 < args.stall_timeout <= 86400:
        raise ConfigError("--stall-timeout must be between 0 and 86400 seconds")
    return SessionConfig(
        window=args.window,
        max_frame=args.max_frame,
        heartbeat=heartbeat,
        session_buffer=args.session_buffer,
        stall_timeout=args.stall_timeout,
    )


async def _until_signal(body: Callable[[], Awaitable[None]], on_stop: Callable[[], str]) -> int:
    """Run `body()`; SIGINT/SIGTERM ends it gracefully and prints `on_stop()` (exit 0)."""
    import trio

    stopped = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal stopped
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    stopped = True
                    nursery.cancel_scope.cancel()
                    return

        async def main() -> None:
            try:
                await body()
            finally:
                nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(main)
    print(on_stop(), flush=True)
    return 0 if stopped else 1


async def cmd_relay(args: argparse.Namespace) -> int:
    import trio

    from trivpn.reverse.relay import Relay, RelayConfig, load_tokens
    from trivpn.reverse.sockets import parse_hostport

    host, port = parse_hostport(args.addr, "--addr")
    end = args.end_port if args.end_port is not None else min(args.start_port + 999, 65535)
    if args.relay_buffer < args.session_buffer:
        from trivpn.errors import ConfigError

        raise ConfigError("--relay-buffer must be at least --session-buffer")
    if args.tokens_file:
        tokens = load_tokens(args.tokens_file)
        for name, token in tokens.items():
            check_token(token, f"{args.tokens_file}: client {name}")
    else:
        tokens = {"default": resolve_token(args)}
    relay = Relay(
        RelayConfig(
            host=host,
            port=port,
            start_port=args.start_port,
            end_port=end,
            tokens=tokens,
            public_host=args.public_host,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            lease=args.lease,
            relay_buffer=args.relay_buffer,
            observe_http=not args.no_http_log,
            log_query=args.log_query,
            session=_session_config(args, args.heartbeat),
        )
    )

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            if args.metrics_addr:
                from trivpn.reverse.metrics import make_registry
                from trivpn.reverse.promserver import serve_metrics

                mhost, mport = parse_hostport(args.metrics_addr, "--metrics-addr", "127.0.0.1")
                registry = make_registry(relay.metrics_groups)
                bound = await nursery.start(serve_metrics, registry, mhost, mport)
                log.info("metrics on http://%s:%d/metrics", mhost, bound)
            await nursery.start(relay.serve)

    return await _until_signal(body, relay.summary)


async def cmd_expose(args: argparse.Namespace) -> int:
    from trivpn.errors import ConfigError
    from trivpn.reverse.expose import Expose, ExposeConfig
    from trivpn.reverse.sockets import parse_hostport, raise_nofile_limit

    shost, sport = parse_hostport(args.server, "--server", "localhost")
    lhost, lport = parse_hostport(args.local, "--local", "127.0.0.1")
    token = resolve_token(args)
    raise_nofile_limit()  # one descriptor per stream: do not stop at the default 1,024
    if not 0 <= args.remote_port <= 65535:
        raise ConfigError("--remote-port must be 0..65535")
    if args.max_attempts < 0:
        raise ConfigError("--max-attempts must be 0 (forever) or more")

    def on_bound(host: str, port: int) -> None:
        print(f"public address: {host}:{port}", flush=True)

    expose = Expose(
        ExposeConfig(
            server_host=shost,
            server_port=sport,
            local_host=lhost,
            local_port=lport,
            token=token,
            remote_port=args.remote_port,
            tls=args.tls or bool(args.tls_ca),
            tls_ca=args.tls_ca,
            tls_server_name=args.tls_server_name,
            reconnect=not args.no_reconnect,
            attempts=args.max_attempts,
            observe_http=not args.no_http_log,
            log_query=args.log_query,
            session=_session_config(args),
        ),
        on_bound=on_bound,
    )
    try:
        return await _until_signal(expose.run, lambda: expose.metrics.summary("expose summary"))
    except BaseException:
        if expose.metrics.connections:
            print(expose.metrics.summary("expose summary"), file=sys.stderr, flush=True)
        raise
