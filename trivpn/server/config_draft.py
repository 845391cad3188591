"""What one walk over a server config collects (:class:`Draft`), and the argument
checks the option functions and the ccd parser share.

Checks raise :class:`~trivpn.profile.checks.Invalid`; the parser completes the message
with the line and option name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from ipaddress import IPv4Address, IPv4Network, IPv6Interface, IPv6Network
from pathlib import Path

from trivpn.hostnames import host_name_problem
from trivpn.profile.checks import Invalid, integer
from trivpn.profile.table import MAX_SECONDS
from trivpn.records import dataclass

__all__ = [
    "Draft",
    "RawListener",
    "command",
    "host",
    "ipv4",
    "ipv6_prefix",
    "netmask",
    "network",
    "pair",
    "parse_proto",
    "path",
]

#: server ``proto`` values -> (transport, address family or None for both).
_PROTO: Mapping[str, tuple[str, int | None]] = {
    "udp": ("udp", None),
    "udp4": ("udp", 4),
    "udp6": ("udp", 6),
    "tcp": ("tcp", None),
    "tcp4": ("tcp", 4),
    "tcp6": ("tcp", 6),
    "tcp-server": ("tcp", None),
    "tcp4-server": ("tcp", 4),
    "tcp6-server": ("tcp", 6),
}


@dataclass(slots=True)
class RawListener:
    """A listener as written; unset values come from the top-level options."""

    line: int
    proto: tuple[str, int | None] | None = None
    port: int | None = None
    local: str | None = None


@dataclass(slots=True)
class Draft:
    """Everything one walk collects, before the combination checks."""

    base_dir: Path | None
    lines: dict[str, int] = field(default_factory=dict)
    warnings: list[tuple[int, str]] = field(default_factory=list)
    listen_blocks: list[RawListener] = field(default_factory=list)
    # shared rows (names as in the client table)
    dev: str | None = None
    dev_kind: str | None = None
    persist_tun: bool = False
    persist_key: bool = False
    port: int | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    tls_crypt: str | None = None
    key_direction: int | None = None
    data_ciphers: list[str] | None = None
    data_ciphers_fallback: str | None = None
    cipher: str | None = None  # ignored in TLS mode, as in OpenVPN 2.6
    auth: str | None = None
    compression: str | None = None
    mute_replay_warnings: bool = False
    tun_mtu: int | None = None
    ping: int | None = None
    ping_restart: int | None = None
    keepalive: tuple[int, int] | None = None
    reneg_sec: int | None = None
    hand_window: int | None = None
    verb: int | None = None
    tls_version_min: str | None = None
    explicit_exit_notify: int | None = None
    # server options
    mode_server: bool = False
    tls_server: bool = False
    proto: tuple[str, int | None] | None = None
    local: str | None = None
    server: tuple[IPv4Network, bool] | None = None  # (network, nopool)
    server_ipv6: IPv6Network | None = None
    topology: str | None = None
    ifconfig: tuple[IPv4Address, IPv4Address] | None = None
    ifconfig_pool: tuple[IPv4Address, IPv4Address, IPv4Address | None] | None = None
    ifconfig_ipv6: IPv6Interface | None = None
    ifconfig_ipv6_pool: IPv6Interface | None = None
    dh: str | None = None
    tls_auth: str | None = None
    tls_crypt_v2: str | None = None
    crl_verify: str | None = None
    crl_verify_path: str | None = None
    push: list[str] = field(default_factory=list)
    routes: list[IPv4Network] = field(default_factory=list)
    routes_ipv6: list[IPv6Network] = field(default_factory=list)
    client_to_client: bool = False
    duplicate_cn: bool = False
    max_clients: int | None = None
    max_routes_per_client: int | None = None
    pool_persist: tuple[str, int] | None = None
    client_config_dir: str | None = None
    ccd_exclusive: bool = False
    verify_client_cert: str | None = None
    remote_cert_tls: str | None = None
    auth_user_pass_verify: tuple[str, str] | None = None
    script_security: int | None = None
    username_as_common_name: bool = False
    management_client_auth: bool = False
    client_connect: str | None = None
    client_disconnect: str | None = None
    learn_address: str | None = None
    status: tuple[str, int] | None = None
    status_version: int | None = None
    user: str | None = None
    group: str | None = None
    management: tuple[str, int | None, str | None] | None = None
    connect_freq: tuple[int, int] | None = None
    connect_freq_initial: tuple[int, int] | None = None
    setenv: list[tuple[str, str]] = field(default_factory=list)
    auth_gen_token: tuple[int, int | None, bool] | None = None  # lifetime, renewal, external-auth
    auth_gen_token_secret: str | None = None
    tmp_dir: str | None = None


# ---- argument checks (shared with the ccd parser) ----------------------------------------------------------------


def parse_proto(value: str) -> tuple[str, int | None]:
    """(transport, family) of a server ``proto``; client-only values are refused."""
    if value.endswith("-client"):
        raise Invalid(f"{value!r} is for clients; a server uses udp, tcp or tcp-server")
    proto = _PROTO.get(value)
    if proto is None:
        raise Invalid(f"unknown protocol {value[:40]!r}")
    return proto


def ipv4(value: str, what: str = "an IPv4 address") -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError:
        raise Invalid(f"{value[:60]!r} is not {what}") from None


def netmask(value: str) -> IPv4Address:
    mask = ipv4(value, "an IPv4 netmask")
    bits = int(mask)
    if bits and (bits | (bits - 1)) & 0xFFFFFFFF != 0xFFFFFFFF:
        raise Invalid(f"{value!r} is not a contiguous netmask")
    return mask


def network(addr: str, mask: str, what: str) -> IPv4Network:
    net = ipv4(addr)
    m = netmask(mask)
    try:
        return IPv4Network(f"{net}/{m}")
    except ValueError:
        raise Invalid(f"{what} {addr} {mask} is not a network address and netmask") from None


def ipv6_prefix(value: str, *, strict: bool) -> IPv6Interface:
    if "/" not in value:
        raise Invalid(f"{value[:60]!r} must be an IPv6 address with a /bits prefix length")
    try:
        iface = IPv6Interface(value)
        if strict:
            IPv6Network(value)  # host bits must be zero
    except ValueError:
        raise Invalid(f"{value[:60]!r} is not an IPv6 network/bits") from None
    return iface


def host(value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise Invalid(f"invalid host name {value[:60]!r}")
    if (problem := host_name_problem(value)) is not None:
        raise Invalid(f"invalid host name {value[:60]!r} ({problem})")
    return value


def command(args: list[str]) -> str:
    if not args[0].strip():
        raise Invalid("empty command")
    return args[0]


def pair(args: list[str], lo: int, hi: int) -> tuple[int, int]:
    return integer(args[0], lo, hi), integer(args[1], 1, MAX_SECONDS)


def path(d: Draft, value: str) -> str:
    """A file or directory the server uses later, anchored at the config's directory."""
    if not value:
        raise Invalid("empty file name")
    path = Path(value)
    if not path.is_absolute() and d.base_dir is not None:
        path = d.base_dir / path
    return str(path)
