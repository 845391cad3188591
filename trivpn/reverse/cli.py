"""`trivpn relay` and `trivpn expose` sub-commands (plugged into trivpn.cli).

Only argparse at import time: the tunnel modules load inside the handlers, so other
commands start as fast as before.

`--config FILE` (configfile.py) supplies any option; a flag given on the command line
wins. To tell "given" from "left at its default", the defaults are marked values
(`_DefaultInt` and friends compare equal to the plain value), and flags that default to
None or False count as not given.
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
    from trivpn.reverse.expose import Expose

log = logging.getLogger("trivpn.reverse")

MIN_TOKEN = 16  # bytes; shorter shared secrets are guessable by an online attacker
TOKEN_ENV = "TRIVPN_TOKEN"
TOKEN_HINT = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"


class _DefaultInt(int):
    """An int default: equal to the plain value, but known not to come from the user."""


class _DefaultFloat(float):
    pass


class _DefaultStr(str):
    __slots__ = ()


_MARKED = (_DefaultInt, _DefaultFloat, _DefaultStr)


def given(value: object) -> bool:
    """Was this option set on the command line (not a default)?"""
    return value is not None and value is not False and not isinstance(value, _MARKED)


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
        from trivpn.reverse.configfile import first_line, read_token_text

        try:
            token = first_line(read_token_text(args.token_file))
        except ValueError as exc:
            raise ConfigError(f"cannot read --token-file {args.token_file}: {exc}") from None
        what = "--token-file"
    elif TOKEN_ENV in os.environ:
        token, what = os.environ[TOKEN_ENV], f"${TOKEN_ENV}"
    else:
        raise ConfigError(
            f"no token: give --token, --token-file, ${TOKEN_ENV} or token/token_file in --config"
        )
    try:  # argv and the environment carry undecodable bytes as surrogates
        raw = token.encode()
    except UnicodeEncodeError:
        raise ConfigError(f"{what}: the token is not UTF-8 text") from None
    check_token(raw, what)
    return raw


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


def _marked(
    p: argparse._ActionsContainer,
    flag: str,
    default: int | float | str,
    metavar: str,
    help: str,
    kind: Callable[[str], int | float] | None = None,
) -> None:
    """An option whose default is marked as one (module docstring). It parses as `kind`,
    else as its default's type; a str option takes no type, as argparse would convert
    the default with it and lose the mark."""
    if isinstance(default, str):
        p.add_argument(flag, default=_DefaultStr(default), metavar=metavar, help=help)
        return
    marked = _DefaultInt(default) if isinstance(default, int) else _DefaultFloat(default)
    conv = kind if kind is not None else type(default)
    p.add_argument(flag, type=conv, default=marked, metavar=metavar, help=help)


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from this TOML file (see docs/reverse-tunnel.md); flags win",
    )
    sp.add_argument("-v", "--verbose", action="count", default=_DefaultInt(0), help="more detail")
    sp.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    _marked(
        sp,
        "--max-frame",
        16 * 1024 * 1024,
        "BYTES",
        "largest frame payload accepted after authentication (default 16 MiB)",
    )
    _marked(
        sp,
        "--window",
        2 * 1024 * 1024,
        "BYTES",
        "per-stream receive window (default 2 MiB: about 1 Gbit/s at 16 ms RTT)",
    )
    _marked(
        sp,
        "--session-buffer",
        16 * 1024 * 1024,
        "BYTES",
        "received bytes a tunnel may hold for readers that are slow (default 16 MiB)",
        _size,
    )
    _marked(
        sp,
        "--stall-timeout",
        60.0,
        "SECONDS",
        "reset a connection whose reader takes nothing for this long (default 60)",
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
    _marked(r, "--addr", ":9000", "HOST:PORT", "tunnel listen address (default :9000)")
    _marked(r, "--start-port", 10000, "N", "first public port (default 10000)")
    r.add_argument(
        "--end-port", type=int, default=None, metavar="M", help="last public port (default N+999)"
    )
    r.add_argument(
        "--public-host",
        default=None,
        metavar="HOST",
        help="address the public ports bind (default: --addr's host)",
    )
    # a token comes from one of these, $TRIVPN_TOKEN or --config (checked in the handler)
    g = r.add_mutually_exclusive_group()
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
    _marked(
        r, "--lease", 60.0, "SECONDS", "keep a client's port this long after it leaves (default 60)"
    )
    _marked(
        r,
        "--relay-buffer",
        256 * 1024 * 1024,
        "BYTES",
        "received bytes all tunnels together may hold (default 256 MiB)",
        _size,
    )
    _marked(
        r, "--idle-lease", 5.0, "SECONDS", "the lease of a port no stream went through (default 5)"
    )
    _marked(r, "--port-quota", 4, "N", "ports (in use or leased) per client name (default 4)")
    _marked(
        r,
        "--name-quota",
        4,
        "N",
        "subdomains (in use or leased) per client name, 1-1024, with --domain (default 4)",
    )
    r.add_argument(
        "--bandwidth",
        metavar="RATE",
        help="limit each client to RATE each way, e.g. '2 MiB/s' or '100 Mbit/s' (default: none)",
    )
    _marked(
        r,
        "--heartbeat",
        10.0,
        "SECONDS",
        "heartbeat interval; 3 missed expire a session (default 10)",
    )
    r.add_argument(
        "--domain", metavar="NAME", help="route NAME's subdomains to clients (with --http-addr)"
    )
    r.add_argument(
        "--http-addr", metavar="HOST:PORT", help="one public port for HTTP, routed by Host"
    )
    r.add_argument(
        "--https-addr", metavar="HOST:PORT", help="one public port for TLS, routed by SNI"
    )
    _common(r)
    r.set_defaults(handler=cmd_relay)

    e = sub.add_parser("expose", help="expose a local TCP service through a relay")
    e.add_argument("--server", metavar="HOST:PORT", help="the relay's tunnel address (required)")
    e.add_argument(
        "--local",
        metavar="HOST:PORT",
        help="the local service to expose (required, unless --config has [[tunnels]])",
    )
    eg = e.add_mutually_exclusive_group()
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
    _marked(e, "--remote-port", 0, "N", "ask for this public port (default: any)")
    e.add_argument(
        "--http", action="store_true", help="serve HTTP on the relay's --http-addr by name"
    )
    e.add_argument(
        "--https", action="store_true", help="pass TLS through on the relay's --https-addr"
    )
    e.add_argument(
        "--subdomain", metavar="NAME", help="the name to lease (default with --http: random)"
    )
    e.add_argument(
        "--inspect",
        metavar="HOST:PORT",
        help="serve a live page of the HTTP requests, with replay (loopback only, e.g. :4040)",
    )
    e.add_argument("--no-reconnect", action="store_true", help="exit when the tunnel is lost")
    _marked(e, "--max-attempts", 10, "N", "reconnect attempts in a row, 0 = forever (default 10)")
    _common(e)
    e.set_defaults(handler=cmd_expose)


async def _until_signal(body: Callable[[], Awaitable[None]], on_stop: Callable[[], str]) -> int:
    """Run `body()`; SIGINT/SIGTERM/SIGHUP end it gracefully and print `on_stop()` (exit 0).

    SIGHUP too: it is what a relay or expose started in a terminal or an ssh session gets
    when that closes, and its default action killed the process, so the kernel ended the
    public connections with a FIN that made a cut-off transfer look complete; a graceful
    stop resets every unfinished stream instead (pipe.py)."""
    import trio

    stopped = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal stopped
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
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

    from trivpn.reverse.build import build_relay
    from trivpn.reverse.sockets import parse_hostport

    relay = build_relay(args)

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            if args.metrics_addr:
                from trivpn.reverse.metrics import make_registry
                from trivpn.reverse.promserver import serve_metrics

                mhost, mport = parse_hostport(args.metrics_addr, "--metrics-addr", "127.0.0.1")
                router = relay.router
                routed = None if router is None else (lambda: (router.rejected, router.evicted))
                registry = make_registry(relay.metrics_groups, routed)
                bound = await nursery.start(serve_metrics, registry, mhost, mport)
                log.info("metrics on http://%s:%d/metrics", mhost, bound)
            await nursery.start(relay.serve)

    return await _until_signal(body, relay.summary)


def _named(args: argparse.Namespace) -> tuple[str, int]:
    """--http/--https/--subdomain -> (subdomain, route bits); ("", 0) for a port."""
    import secrets

    from trivpn.errors import ConfigError
    from trivpn.reverse.http.names import ROUTE_HTTP, ROUTE_TLS, NameUnavailable, check_label

    if not (args.http or args.https or args.subdomain):
        return "", 0
    if args.remote_port:
        raise ConfigError("--remote-port and --http/--https/--subdomain exclude each other")
    routes = (ROUTE_HTTP if args.http or not args.https else 0) | (ROUTE_TLS if args.https else 0)
    name = args.subdomain.lower() if args.subdomain else secrets.token_hex(4)
    try:
        return check_label(name), routes
    except NameUnavailable as exc:
        raise ConfigError(f"--subdomain: {exc}") from None


def _with_inspector(
    expose: Expose, addr: str, lhost: str, lport: int
) -> Callable[[], Awaitable[None]]:
    """expose.run plus the --inspect web page (loopback only: it shows real traffic)."""
    import ipaddress

    import trio

    from trivpn.errors import ConfigError
    from trivpn.reverse.http.inspectsrv import Inspector
    from trivpn.reverse.sockets import parse_hostport

    host, port = parse_hostport(addr, "--inspect", "127.0.0.1")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"--inspect {addr}: the inspector shows headers and query strings of real "
            "traffic, so it listens on a loopback address only (127.0.0.1, ::1)"
        )
    inspector = Inspector(lhost, lport)
    expose.pipe_factory = inspector.pipe_factory

    async def body() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(inspector.serve, host, port)
            shown = f"[{host}]" if ":" in host else host
            print(f"inspector: http://{shown}:{bound}/", flush=True)
            await expose.run()
            nursery.cancel_scope.cancel()

    return body


async def cmd_expose(args: argparse.Namespace) -> int:
    from trivpn.reverse.build import build_expose
    from trivpn.reverse.sockets import raise_nofile_limit

    expose = build_expose(args)
    raise_nofile_limit()  # one descriptor per stream: do not stop at the default 1,024
    body: Callable[[], Awaitable[None]] = expose.run
    if args.inspect:
        first = expose.tunnels[0]
        body = _with_inspector(expose, args.inspect, first.local_host, first.local_port)
    try:
        return await _until_signal(body, lambda: expose.metrics.summary("expose summary"))
    except BaseException:
        if expose.metrics.connections:
            print(expose.metrics.summary("expose summary"), file=sys.stderr, flush=True)
        raise
