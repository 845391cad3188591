"""What a `Relay` is built from, and the checks it runs before it listens.

`RelayConfig` holds every relay setting (build.py fills it from the command line and the
--config file); `load_tokens` reads a tokens file. `check_config` and `server_tls` are
the start-up checks: a relay with no token, an empty port range, a zero quota or a TLS
key without its certificate refuses to start with one line (`ConfigError`) instead of
failing later, on the first client.
"""

from __future__ import annotations

import ssl
from dataclasses import field

from trivpn.errors import ConfigError
from trivpn.records import dataclass
from trivpn.reverse.config import SessionConfig
from trivpn.reverse.guard import GuardConfig
from trivpn.reverse.http.names import DEFAULT_NAME_QUOTA
from trivpn.reverse.http.router import RoutingConfig
from trivpn.reverse.ports import DEFAULT_PORT_QUOTA, IDLE_LEASE


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
    name_quota: int = DEFAULT_NAME_QUOTA  # subdomains (in use or leased) per token name
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


def check_config(config: RelayConfig) -> None:
    """Refuse, with one line, a configuration no client could use."""
    if not config.tokens or not all(config.tokens.values()):
        raise ConfigError(
            "the relay needs at least one non-empty token (--token or --tokens-file)"
        )
    if not 1 <= config.start_port <= config.end_port <= 65535:
        raise ConfigError(f"bad public port range {config.start_port}-{config.end_port}")
    if config.port_quota < 1 or any(
        c.port_quota is not None and c.port_quota < 1 for c in config.clients.values()
    ):
        raise ConfigError("a port quota must be at least 1")
    if config.name_quota < 1:
        raise ConfigError("a name quota must be at least 1")


def server_tls(config: RelayConfig) -> ssl.SSLContext | None:
    """The tunnel listener's TLS context (TLS 1.2 or later), or None for plain TCP; a
    certificate that does not load is refused at start, not at the first handshake."""
    if not (config.tls_cert or config.tls_key):
        return None
    if not (config.tls_cert and config.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate/key: {exc}") from None
    return ctx
