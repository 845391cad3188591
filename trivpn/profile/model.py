"""The parsed profile: :class:`Profile` and the value types it holds.

These are plain data: :mod:`trivpn.profile.profile` builds them (see
:mod:`trivpn.profile.table` for how), the session layers read them.
"""

from __future__ import annotations

from dataclasses import field

from trivpn.records import dataclass

__all__ = [
    "DEFAULT_AUTH",
    "DEFAULT_DATA_CIPHERS",
    "DEFAULT_PROTO",
    "DEFAULT_VERB",
    "OPENVPN_PORT",
    "HTTPProxyOptions",
    "Profile",
    "ProxySpec",
    "Remote",
    "Route",
    "Route6",
]

#: OpenVPN 2.6's default ``--data-ciphers``.
DEFAULT_DATA_CIPHERS = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
#: Default remote port (OpenVPN's ``OPENVPN_PORT``).
OPENVPN_PORT = 1194
DEFAULT_PROTO = "udp"
DEFAULT_AUTH = "SHA1"
#: OpenVPN's default ``--verb``.
DEFAULT_VERB = 1


@dataclass(frozen=True, slots=True)
class Remote:
    """One server address to try, with the normalized transport name."""

    host: str
    port: int
    proto: str


@dataclass(frozen=True, slots=True)
class Route:
    """An IPv4 route (``route`` in the profile or pushed).

    ``network`` and ``gateway`` are dotted quads or one of the keywords
    ``vpn_gateway``/``net_gateway``/``remote_host`` (resolved when the routes are
    applied); ``gateway`` None means "use route-gateway".
    """

    network: str
    netmask: str
    gateway: str | None
    metric: int | None


@dataclass(frozen=True, slots=True)
class Route6:
    """An IPv6 route; ``network`` is normalized, e.g. ``"fd00::/64"``."""

    network: str
    gateway: str | None
    metric: int | None


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """An HTTP or SOCKS5 proxy that the TCP connection to the server goes through.

    ``auth`` is ``none``, ``basic``, ``auto`` or ``auto-nct`` for HTTP and ``none`` or
    ``userpass`` for SOCKS5; ``ask`` means the credentials must be entered by the user
    (auth file ``stdin``, or a file with a username only).
    """

    host: str
    port: int
    auth: str = "none"
    credentials: tuple[str, str] | None = None
    ask: bool = False


@dataclass(frozen=True, slots=True)
class HTTPProxyOptions:
    """``http-proxy-option``: HTTP version, User-Agent and extra request headers."""

    version: str = "1.0"
    agent: str | None = None
    headers: tuple[tuple[str, str | None], ...] = ()  # (name, value) or (whole line, None)


@dataclass(slots=True)
class Profile:
    """Everything trivpn needs from a client profile, validated.

    ``auth_user_pass`` is ``None`` when the profile has no ``auth-user-pass``,
    ``(username, password)`` when both come from an inline block or a file, and
    ``True`` when the user must be prompted (no file, or a file with only a username;
    a warning then says so).
    """

    remotes: list[Remote]
    dev_type: str = "tun"
    #: the `dev` argument as given (`tun`, or a specific name: trivpn.tunname)
    dev_name: str = "tun"
    ca: str | None = None
    cert: str | None = None
    key: str | None = field(default=None, repr=False)  # a secret
    tls_auth: str | None = field(default=None, repr=False)  # a secret
    key_direction: int | None = None
    tls_crypt: str | None = field(default=None, repr=False)  # a secret
    tls_crypt_v2: str | None = field(default=None, repr=False)  # a secret
    remote_cert_tls: str | None = None
    verify_x509_name: tuple[str, str] | None = None
    data_ciphers: list[str] = field(default_factory=lambda: list(DEFAULT_DATA_CIPHERS))
    cipher: str | None = None
    data_ciphers_fallback: str | None = None
    auth: str = DEFAULT_AUTH
    tls_version_min: str | None = None
    tls_version_max: str | None = None
    tls_cipher: str | None = None
    tls_ciphersuites: str | None = None
    tls_groups: str | None = None
    tls_cert_profile: str | None = None
    #: peer-fingerprint: SHA-256 digests (then the CA is optional)
    peer_fingerprints: list[bytes] = field(default_factory=list)
    crl_verify: str | None = None  # the CRL text (file or inline)
    crl_dir: str | None = None  # crl-verify DIR dir
    #: askpass: the key's passphrase, or True to prompt
    askpass: str | bool | None = field(default=None, repr=False)
    verb: int = DEFAULT_VERB
    pull: bool = False
    tls_client: bool = False
    persist_tun: bool = False
    persist_key: bool = False
    kill_switch: bool = False  # trivpn-kill-switch (trivpn's own directive)
    nobind: bool = False
    resolv_retry: float | None = None
    mute_replay_warnings: bool = False
    compression: str | None = None
    auth_user_pass: tuple[str, str] | None | bool = field(default=None, repr=False)
    #: drop the password from memory once it was used (`auth-nocache`)
    auth_nocache: bool = False
    tun_mtu: int | None = None
    ping: int | None = None
    ping_restart: int | None = None
    ping_exit: int | None = None
    keepalive: tuple[int, int] | None = None
    reneg_sec: int | None = None
    reneg_bytes: int | None = None
    reneg_pkts: int | None = None
    connect_retry: tuple[int, int] | None = None  # (initial delay, max delay) seconds
    connect_retry_max: int | None = None  # full passes over the remotes; None = unlimited
    server_poll_timeout: int | None = None  # per address: seconds to get an answer
    hand_window: int | None = None
    remote_random: bool = False
    local: str | None = None  # `local` address to bind (an IP literal)
    lport: int | None = None  # `lport` / `port` for binding when `bind` is in effect
    bind: bool = False  # bind the socket (set by `local`, `lport`, `bind`); `nobind` clears it
    static_challenge: tuple[str, bool] | None = None  # (prompt text, echo the response)
    explicit_exit_notify: int | None = None
    #: ``management``: (address or socket path, port or None for ``unix``, password file)
    management: tuple[str, int | None, str | None] | None = None
    management_hold: bool = False
    management_query_passwords: bool = False
    auth_retry: str | None = None  # none | nointeract | interact
    status: tuple[str, int] | None = None  # ``status FILE [seconds]``
    status_version: int | None = None
    http_proxy: ProxySpec | None = None
    socks_proxy: ProxySpec | None = None
    http_proxy_options: HTTPProxyOptions = field(default_factory=HTTPProxyOptions)
    # routing and DNS (see trivpn.session.netsettings for how they meet the pushed ones)
    routes: list[Route] = field(default_factory=list)
    routes_ipv6: list[Route6] = field(default_factory=list)
    route_gateway: str | None = None
    route_metric: int | None = None
    redirect_gateway: frozenset[str] | None = None
    block_ipv6: bool = False
    route_nopull: bool = False
    #: `pull-filter` rules in order: (accept|ignore|reject, option text prefix)
    pull_filters: list[tuple[str, str]] = field(default_factory=list)
    ifconfig: tuple[str, str] | None = None  # (local, remote or netmask)
    ifconfig_ipv6: tuple[str, str | None] | None = None  # ("addr/bits", remote)
    topology: str | None = None
    dns_servers: list[str] = field(default_factory=list)  # dhcp-option DNS/DNS6, dns server
    dns_domains: list[str] = field(default_factory=list)  # dhcp-option DOMAIN..., dns search-domains
    #: the profile's `dhcp-option` lines as written (scripts' foreign_option_N)
    dhcp_option_lines: list[str] = field(default_factory=list)
    #: leave the system's DNS alone (`trivpn connect --no-dns`)
    no_dns: bool = False
    #: every <connection> block's options as written (one list, shared with the alternatives)
    connections: list[dict[str, list[str]]] = field(default_factory=list)
    #: profiles for the 2nd, 3rd... <connection> blocks, tried in order after this one
    alternatives: list[Profile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: str | None = None
    # scripts and privileges (trivpn.session.scripts, trivpn.session.privdrop)
    script_up: str | None = None
    script_down: str | None = None
    script_route_up: str | None = None
    script_route_pre_down: str | None = None
    script_ipchange: str | None = None
    #: OpenVPN's default level 1: no external programs
    script_security: int = 1
    #: `setenv NAME VALUE` pairs handed to scripts
    setenv: list[tuple[str, str]] = field(default_factory=list)
    user: str | None = None
    group: str | None = None

    @property
    def scripts(self) -> dict[str, str | None]:
        """The configured script commands by OpenVPN option name."""
        return {
            "up": self.script_up,
            "down": self.script_down,
            "route-up": self.script_route_up,
            "route-pre-down": self.script_route_pre_down,
            "ipchange": self.script_ipchange,
        }
