"""The parsed server configuration: :class:`ServerConfig` and the value types it holds.

Plain frozen data built by :mod:`trivpn.server.config`; the pool, the routing table,
PUSH_REPLY assembly and the listeners read it.  Addresses are :mod:`ipaddress`
objects so that consumers never re-parse text.
"""

from __future__ import annotations

from dataclasses import field
from ipaddress import IPv4Address, IPv4Network, IPv6Interface, IPv6Network

from trivpn.profile.model import DEFAULT_DATA_CIPHERS, DEFAULT_VERB, OPENVPN_PORT
from trivpn.records import dataclass
from trivpn.server.demux_types import DemuxConfig
from trivpn.server.pool_types import IPv4Pool, IPv6Pool
from trivpn.server.routing import MAX_ROUTES_PER_CLIENT

__all__ = [
    "DEFAULT_CONNECT_FREQ_INITIAL",
    "DEFAULT_DATA_CIPHERS",
    "DEFAULT_HAND_WINDOW",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_POOL_PERSIST_SECONDS",
    "DEFAULT_RENEG_SEC",
    "DEFAULT_STATUS_SECONDS",
    "DEFAULT_VERB",
    "OPENVPN_PORT",
    "AuthGenToken",
    "AuthScript",
    "Listener",
    "Management",
    "PoolPersist",
    "ServerConfig",
    "StatusFile",
]

#: OpenVPN 2.6 server defaults (reference openvpn-server.md 1.4).
DEFAULT_MAX_CLIENTS = 1024
DEFAULT_HAND_WINDOW = 60
DEFAULT_RENEG_SEC = 3600
DEFAULT_POOL_PERSIST_SECONDS = 600
DEFAULT_STATUS_SECONDS = 60
#: ``connect-freq-initial``: at most this many reset replies per that many seconds.
DEFAULT_CONNECT_FREQ_INITIAL = (100, 10)


@dataclass(frozen=True, slots=True)
class Listener:
    """One socket to serve on.

    ``proto`` is ``udp`` or ``tcp``; ``family`` is ``4``, ``6`` or ``None`` (whatever
    ``local`` resolves to: both families for a name or the wildcard).  ``local`` is
    ``None`` for the wildcard address.
    """

    proto: str
    port: int
    local: str | None = None
    family: int | None = None
    line: int = 0


@dataclass(frozen=True, slots=True)
class Management:
    """``management IP PORT [pwfile]`` or ``management /path unix [pwfile]``."""

    address: str  # an IP address or host name, or the socket path for ``unix``
    port: int | None  # None for a unix socket
    password_file: str | None = None

    @property
    def unix(self) -> bool:
        return self.port is None


@dataclass(frozen=True, slots=True)
class AuthScript:
    """``auth-user-pass-verify CMD via-file|via-env``."""

    command: str
    method: str  # "via-file" or "via-env"


@dataclass(frozen=True, slots=True)
class AuthGenToken:
    """``auth-gen-token [lifetime] [renewal] [external-auth]`` with its secret (None: a
    random key per process). ``renewal`` defaults to reneg-sec, as in OpenVPN."""

    lifetime: int = 0
    renewal: int = DEFAULT_RENEG_SEC
    external_auth: bool = False
    secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class PoolPersist:
    """``ifconfig-pool-persist FILE [SECONDS]``; 0 seconds: read-only, entries fixed."""

    path: str
    seconds: int = DEFAULT_POOL_PERSIST_SECONDS


@dataclass(frozen=True, slots=True)
class StatusFile:
    """``status FILE [SECONDS]`` with ``status-version``."""

    path: str
    seconds: int = DEFAULT_STATUS_SECONDS
    version: int = 1


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """A validated OpenVPN 2.6 server configuration, with the ``server`` helper expanded.

    ``push`` is the global push list in OpenVPN's order: the config's ``push`` lines,
    then what the helpers add (``tun-ipv6``, ``route-gateway``/``route``, ``topology``,
    ``ping``/``ping-restart`` from ``keepalive``).  ``routes`` are the server's own
    kernel routes into the tun (config ``route`` lines plus the helper's).
    """

    listeners: tuple[Listener, ...]
    ca: str
    cert: str
    key: str
    dev: str = "tun"
    topology: str = "net30"
    #: the server's tun address and netmask (subnet) or peer address (net30)
    ifconfig: tuple[IPv4Address, IPv4Address] | None = None
    ifconfig_ipv6: IPv6Interface | None = None  # the server's own, e.g. fd00:8::1/64
    pool: IPv4Pool | None = None
    pool_ipv6: IPv6Pool | None = None
    #: the whole tunnel network (``server N M``), None without the helper
    network: IPv4Network | None = None
    network_ipv6: IPv6Network | None = None
    push: tuple[str, ...] = ()
    routes: tuple[IPv4Network, ...] = ()
    routes_ipv6: tuple[IPv6Network, ...] = ()
    dh: str | None = None  # "none", or the DH parameters' text (not used: ECDHE only)
    tls_auth: str | None = None
    key_direction: int | None = None
    tls_crypt: str | None = None
    tls_crypt_v2: str | None = None  # the server key text
    crl_verify: str | None = None  # CRL text (PEM) as read at startup
    #: the CRL file to re-read when it changes (OpenVPN reads it per connection); None inline
    crl_verify_path: str | None = None
    data_ciphers: tuple[str, ...] = DEFAULT_DATA_CIPHERS
    data_ciphers_fallback: str | None = None
    auth: str | None = None
    tls_version_min: str | None = None
    keepalive: tuple[int, int] | None = None
    ping: int | None = None  # server-side ping interval (keepalive N or ping)
    ping_restart: int | None = None  # server-side: twice keepalive's M, as OpenVPN
    client_to_client: bool = False
    duplicate_cn: bool = False
    max_clients: int = DEFAULT_MAX_CLIENTS
    max_routes_per_client: int = MAX_ROUTES_PER_CLIENT  # for the Router
    pool_persist: PoolPersist | None = None
    client_config_dir: str | None = None
    ccd_exclusive: bool = False
    verify_client_cert: str = "require"
    remote_cert_tls: str | None = None
    auth_user_pass_verify: AuthScript | None = None
    script_security: int = 1
    username_as_common_name: bool = False
    #: ``management-client-auth``: every client waits for the management client-auth/deny
    management_client_auth: bool = False
    client_connect: str | None = None
    client_disconnect: str | None = None
    learn_address: str | None = None
    explicit_exit_notify: int | None = None
    reneg_sec: int = DEFAULT_RENEG_SEC
    hand_window: int = DEFAULT_HAND_WINDOW
    status: StatusFile | None = None
    user: str | None = None
    group: str | None = None
    management: Management | None = None
    verb: int = DEFAULT_VERB
    persist_key: bool = False
    persist_tun: bool = False
    connect_freq: tuple[int, int] | None = None
    connect_freq_initial: tuple[int, int] = DEFAULT_CONNECT_FREQ_INITIAL
    tun_mtu: int | None = None
    #: ``comp-lzo no`` -> "lzo-no", ``compress``/``compress stub(-v2)`` -> "stub"/"stub-v2":
    #: no compression, but the data packets carry the compression framing byte
    compression: str | None = None
    #: ``setenv NAME VALUE`` lines: extra variables for every script
    setenv: tuple[tuple[str, str], ...] = ()
    auth_gen_token: AuthGenToken | None = None
    #: ``tmp-dir``: where the scripts' temporary files go (None: the system's)
    tmp_dir: str | None = None
    warnings: tuple[str, ...] = field(default=())
    source: str | None = None

    def demux_config(self) -> DemuxConfig:
        """The options the UDP demultiplexer obeys."""
        count, period = self.connect_freq_initial
        new, per = self.connect_freq or (0, 0)
        return DemuxConfig(self.hand_window, self.max_clients, count, float(period), new, float(per))
