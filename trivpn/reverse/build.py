"""Building `Relay` and `Expose` from parsed arguments and an optional --config file.

The command line's handlers (cli.py) call `build_relay` / `build_expose`; the settings
come from three places, in this order of precedence: a flag given on the command line,
the --config file (configfile.py), the flag's default. `apply_file` does the merge in the
argparse namespace itself, so everything after it reads one set of values.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from trivpn.reverse.cli import _named, check_token, given, resolve_token

if TYPE_CHECKING:
    from trivpn.reverse.config import SessionConfig
    from trivpn.reverse.configfile import FileSettings
    from trivpn.reverse.expose import Expose
    from trivpn.reverse.relay import Relay


def apply_file(args: argparse.Namespace, file: FileSettings) -> None:
    """Fill every option the command line did not give from the config file, in place
    (in place: the caller's `args.debug` must see a file's `debug = true`)."""
    if any(given(getattr(args, d, None)) for d in ("token", "token_file", "tokens_file")):
        file.values = {
            k: v for k, v in file.values.items() if k not in ("token", "token_file", "tokens_file")
        }
        file.clients = []  # the command line's token replaces the file's clients
    if given(getattr(args, "local", None)) or given(getattr(args, "remote_port", None)):
        file.tunnels = []  # so does its tunnel
    for dest, value in file.values.items():
        if not given(getattr(args, dest, None)):
            setattr(args, dest, value)
    if "verbose" in file.values and getattr(args, "verbose", 0) > 0:
        from trivpn.cli_common import setup_logging

        setup_logging(args.verbose, getattr(args, "quiet", False), getattr(args, "log", None),
                      tracebacks=getattr(args, "debug", False))


def _session_config(
    args: argparse.Namespace, heartbeat: float = 10.0, limits: dict[str, object] | None = None
) -> SessionConfig:
    from trivpn.errors import ConfigError
    from trivpn.reverse.config import MAX_WINDOW, SessionConfig
    from trivpn.reverse.frames import ABSOLUTE_MAX_FRAME

    if not 256 <= args.max_frame <= ABSOLUTE_MAX_FRAME:
        raise ConfigError(f"--max-frame must be between 256 and {ABSOLUTE_MAX_FRAME}")
    if not 1024 <= args.window <= MAX_WINDOW:
        raise ConfigError("--window must be between 1024 and 2147483647")
    if not 0.05 <= heartbeat <= 3600:
        raise ConfigError("--heartbeat must be between 0.05 and 3600 seconds")
    cfg = SessionConfig(window=args.window, max_frame=args.max_frame, heartbeat=heartbeat)
    for key, value in (limits or {}).items():  # checked by configfile
        setattr(cfg, key, value)
    # flags win over the file (their defaults are marked, see cli.given)
    if given(args.session_buffer) or "session_buffer" not in (limits or {}):
        if args.session_buffer < 64 * 1024:
            raise ConfigError("--session-buffer must be at least 64K")
        cfg.session_buffer = int(args.session_buffer)
    if given(args.stall_timeout) or "stall_timeout" not in (limits or {}):
        if not 0 < args.stall_timeout <= 86400:
            raise ConfigError("--stall-timeout must be between 0 and 86400 seconds")
        cfg.stall_timeout = float(args.stall_timeout)
    return cfg


#: numeric options held to their config-file key's bounds (configfile.key_check): an
#: unchecked `--lease inf` or `--idle-lease nan` passed here and broke every session
BOUNDED = {
    "relay": (
        "start_port",
        "end_port",
        "lease",
        "idle_lease",
        "heartbeat",
        "port_quota",
        "name_quota",
        "relay_buffer",
        "window",
        "max_frame",
        "session_buffer",
        "stall_timeout",
    ),
    "expose": (
        "remote_port",
        "max_attempts",
        "window",
        "max_frame",
        "session_buffer",
        "stall_timeout",
    ),
}


def check_bounds(args: argparse.Namespace, role: str) -> None:
    """Refuse a numeric option outside what the config file allows for the same key
    (nan, inf and huge values included) with one line naming the flag."""
    from trivpn.errors import ConfigError
    from trivpn.reverse.configfile import key_check

    for key in BOUNDED[role]:
        value = getattr(args, key, None)
        if value is None:
            continue
        try:
            key_check(role, key)(value)
        except ValueError as exc:
            raise ConfigError(f"--{key.replace('_', '-')}: {exc}") from None


def _load(args: argparse.Namespace, role: str) -> FileSettings | None:
    if not args.config:
        return None
    from trivpn.reverse import configfile

    file = (
        configfile.load_relay(args.config)
        if role == "relay"
        else configfile.load_expose(args.config)
    )
    apply_file(args, file)
    return file


def build_relay(args: argparse.Namespace) -> Relay:
    """The relay the command line and its --config file describe (flags win)."""
    from trivpn.errors import ConfigError
    from trivpn.reverse.bucket import parse_rate
    from trivpn.reverse.guard import GuardConfig
    from trivpn.reverse.relay import Relay
    from trivpn.reverse.relayconfig import ClientLimits, RelayConfig, load_tokens
    from trivpn.reverse.sockets import parse_hostport

    file = _load(args, "relay")
    host, port = parse_hostport(args.addr, "--addr")
    end = args.end_port if args.end_port is not None else min(args.start_port + 999, 65535)
    clients: dict[str, ClientLimits] = {}
    if args.tokens_file:
        tokens = load_tokens(args.tokens_file)
        for name, token in tokens.items():
            check_token(token, f"{args.tokens_file}: client {name}")
    elif file is not None and file.clients:
        tokens = {c.name: c.token for c in file.clients}
        clients = {c.name: ClientLimits(c.port_quota, c.bandwidth) for c in file.clients}
    else:
        tokens = {"default": resolve_token(args)}
    bandwidth = args.bandwidth
    if isinstance(bandwidth, str):  # from the command line; the file's is checked already
        try:
            bandwidth = parse_rate(bandwidth)
        except ValueError as exc:
            raise ConfigError(f"--bandwidth: {exc}") from None
    if args.port_quota < 1:
        raise ConfigError("--port-quota must be at least 1")
    session = _session_config(args, args.heartbeat, file.session if file else None)
    if args.relay_buffer < session.session_buffer:
        raise ConfigError("--relay-buffer must be at least --session-buffer")
    if args.lease < 0 or args.idle_lease < 0:
        raise ConfigError("--lease and --idle-lease must not be negative")
    check_bounds(args, "relay")  # after the checks above: they word their cases better
    routing = None
    if args.domain or args.http_addr or args.https_addr:
        from trivpn.reverse.http.router import RoutingConfig

        if not args.domain:
            raise ConfigError("--http-addr/--https-addr need --domain")
        routing = RoutingConfig(
            args.domain,
            parse_hostport(args.http_addr, "--http-addr") if args.http_addr else None,
            parse_hostport(args.https_addr, "--https-addr") if args.https_addr else None,
        )
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
            idle_lease=args.idle_lease,
            port_quota=args.port_quota,
            name_quota=args.name_quota,
            bandwidth=bandwidth,
            clients=clients,
            observe_http=not args.no_http_log,
            log_query=bool(args.log_query),
            session=session,
            relay_buffer=int(args.relay_buffer),
            guard=GuardConfig(**file.guard) if file else GuardConfig(),
            routing=routing,
        )
    )
    return relay


def build_expose(args: argparse.Namespace) -> Expose:
    """The expose the command line and its --config file describe (flags win)."""
    from trivpn.errors import ConfigError
    from trivpn.reverse.expose import Expose, ExposeConfig, TunnelConfig
    from trivpn.reverse.sockets import parse_hostport

    file = _load(args, "expose")
    if not args.server:
        raise ConfigError("expose needs --server HOST:PORT (or server in the --config file)")
    shost, sport = parse_hostport(args.server, "--server", "localhost")
    if not sport:  # port 0 is for listening: dialling it is retried without end
        raise ConfigError("--server: the port must not be 0")
    if file is not None and file.tunnels:
        tunnels = [
            TunnelConfig(t.local_host, t.local_port, t.remote_port, t.label) for t in file.tunnels
        ]
    elif args.local:
        if not 0 <= args.remote_port <= 65535:
            raise ConfigError("--remote-port must be 0..65535")
        lhost, lport = parse_hostport(args.local, "--local", "127.0.0.1")
        if not lport:
            raise ConfigError("--local: the port must not be 0")
        tunnels = [TunnelConfig(lhost, lport, args.remote_port)]
    else:
        raise ConfigError("expose needs --local HOST:PORT (or [[tunnels]] in the --config file)")
    token = resolve_token(args)
    if args.max_attempts < 0:
        raise ConfigError("--max-attempts must be 0 (forever) or more")

    subdomain, routes = _named(args)  # after the file: it may set http/https/subdomain
    session = _session_config(args, limits=file.session if file else None)
    check_bounds(args, "expose")

    def on_bound(host: str, port: int) -> None:
        for addr in expose.urls or [f"{host}:{port}"]:
            print(f"public address: {addr}", flush=True)

    expose = Expose(
        ExposeConfig(
            server_host=shost,
            server_port=sport,
            local_host=tunnels[0].local_host,
            local_port=tunnels[0].local_port,
            token=token,
            remote_port=tunnels[0].remote_port,
            tunnels=tunnels,
            tls=args.tls or bool(args.tls_ca),
            tls_ca=args.tls_ca,
            tls_server_name=args.tls_server_name,
            reconnect=not args.no_reconnect,
            attempts=args.max_attempts,
            observe_http=not args.no_http_log,
            log_query=bool(args.log_query),
            subdomain=subdomain,
            routes=routes,
            session=session,
        ),
        on_bound=on_bound,
    )
    return expose
