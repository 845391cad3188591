"""PUSH_REPLY handling: parsing of pushed options (reassembly is in :mod:`.pushreply`).

Theory of operation
-------------------
:class:`PushReplyAssembler` (re-exported here) turns one or more ``PUSH_REPLY``
messages into a list of option strings; each is tokenized like a config line and
:func:`parse_push_options` turns the list into :class:`PushedSettings`.

Everything here is untrusted input: malformed values (bad address, bad number,
peer-id beyond 24 bits, compression we refuse) raise :class:`RemoteProtocolError`
with a clear message; options we do not implement only add a warning line.

A malformed ``route``, ``route-ipv6``, ``route-gateway`` or ``route-metric`` (a host
name as network, a bad netmask...) is the exception: OpenVPN 2.6's client logs
"Options error" and goes on without it, so it is skipped with a warning here too
(:data:`SKIPPABLE`). Losing one of them only leaves a network outside the tunnel that
OpenVPN leaves outside as well; restarting instead would never connect to a server that
always pushes it. Everything that defines the tunnel (addresses, topology, MTU, cipher,
compression) or keeps packets or names from leaving it (``block-ipv6``, DNS) stays a
restart.

``dns`` options (2.6, pushed when we announce IV_PROTO bit 6) take precedence over
``dhcp-option DNS``/``DOMAIN`` as in OpenVPN: if any ``dns server`` address was
pushed, :attr:`PushedSettings.dns_servers` only holds those (by ascending server
priority); likewise ``dns search-domains`` replaces the ``dhcp-option`` domains.
``dns server N resolve-domains`` limits a server to those names (split DNS): when every
pushed server has such a list, their union is :attr:`PushedSettings.dns_resolve_domains`;
if one server takes every name, it stays empty (all names go to the tunnel's servers).
A ``dns server`` given options but no address restarts the session, as in OpenVPN
("dns server N does not have an address assigned").

``redirect_gateway_ipv6`` is True when IPv6 default traffic is meant to go through
the tunnel: the ``ipv6`` flag of ``redirect-gateway``, or a pushed ``route-ipv6``
covering ``::/0`` (either as one route or as the two halves ``::/1`` + ``8000::/1``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import TypeVar

from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.profile import netopts
from trivpn.profile.checks import Invalid
from trivpn.profile.model import Route, Route6
from trivpn.profile.netopts import PullPolicy, PushRejected
from trivpn.profile.options import tokenize_line
from trivpn.profile.pushreply import (
    MAX_PUSH_MESSAGES,
    MAX_PUSH_OPTIONS,
    PushReplyAssembler,
    continuation_value,
)
from trivpn.records import dataclass
from trivpn.redact import redact_option
from trivpn.wire import MAX_PEER_ID

__all__ = [
    "MAX_PEER_ID",
    "MAX_PUSH_MESSAGES",
    "MAX_PUSH_OPTIONS",
    "PullPolicy",
    "PushRejected",
    "PushReplyAssembler",
    "PushedSettings",
    "Route",
    "Route6",
    "parse_push_options",
]

_T = TypeVar("_T")

#: Upper bound for pushed timer values (seconds).
MAX_SECONDS = 10 * 365 * 24 * 3600
TUN_MTU_MIN = 100
TUN_MTU_MAX = 65535

PROTOCOL_FLAGS = frozenset({"cc-exit", "tls-ekm", "dyn-tls-crypt", "aead-epoch"})

#: Pushed options that change nothing for our client and are accepted quietly.
#: (`tun-ipv6` is a no-op that 2.6 servers still push to every client with IPv6.)
_SILENT_PUSH = frozenset(
    {
        "block-outside-dns",
        "register-dns",
        "route-delay",
        "ip-win32",
        "dhcp-pre-release",
        "tun-ipv6",
    }
)

#: Pushed options that are skipped with a warning when malformed, as OpenVPN 2.6 does.
SKIPPABLE = frozenset({"route", "route-ipv6", "route-gateway", "route-metric"})

_CIPHER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")


@dataclass(slots=True)
class PushedSettings:
    """What the server told us to use. Defaults are OpenVPN's client defaults."""

    ifconfig_local: str | None = None
    ifconfig_remote_or_mask: str | None = None
    topology: str = "net30"
    topology_pushed: bool = False
    ifconfig_ipv6_local: str | None = None
    ifconfig_ipv6_remote: str | None = None
    routes: list[Route] = field(default_factory=list)
    routes_ipv6: list[Route6] = field(default_factory=list)
    route_gateway: str | None = None
    redirect_gateway: frozenset[str] | None = None
    redirect_gateway_ipv6: bool = False
    route_metric: int | None = None
    block_ipv6: bool = False
    dns_servers: list[str] = field(default_factory=list)
    dns_domains: list[str] = field(default_factory=list)
    #: names only these servers resolve (`dns server N resolve-domains`); empty: all names
    dns_resolve_domains: list[str] = field(default_factory=list)
    ping: int | None = None
    ping_restart: int | None = None
    peer_id: int | None = None
    cipher: str | None = None
    key_derivation_ekm: bool = False
    protocol_flags: frozenset[str] = frozenset()
    tun_mtu: int | None = None
    auth_token: str | None = field(default=None, repr=False)  # a secret: never in a log
    compression: str | None = None
    options: list[str] = field(default_factory=list)
    #: options the user's pull-filter / route-nopull kept from taking effect
    filtered: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ipv4_prefixlen(self) -> int | None:
        """Prefix length of our IPv4 address: the mask for subnet, 32 for net30/p2p."""
        iface = self.ipv4_interface()
        return None if iface is None else iface[1]

    def ipv4_interface(self) -> tuple[str, int, str | None] | None:
        """``(address, prefixlen, peer)`` for the tun device, or None without ifconfig.

        With ``topology subnet`` the second ifconfig value is a netmask and there is
        no peer; with net30/p2p it is the point-to-point peer address.
        """
        if self.ifconfig_local is None or self.ifconfig_remote_or_mask is None:
            return None
        if self.topology == "subnet":
            net = ipaddress.IPv4Network(f"0.0.0.0/{self.ifconfig_remote_or_mask}")
            return self.ifconfig_local, net.prefixlen, None
        return self.ifconfig_local, 32, self.ifconfig_remote_or_mask

    @property
    def use_data_v2(self) -> bool:
        """P_DATA_V2 is used exactly when the server pushed a peer-id."""
        return self.peer_id is not None




def parse_push_options(options: Sequence[str], pull: PullPolicy | None = None) -> PushedSettings:
    """Parse pushed options (one option string per item) into :class:`PushedSettings`.

    ``pull`` (the profile's pull-filter and route-nopull) drops options first; a
    ``pull-filter reject`` match raises :class:`PushRejected`.
    """
    parser = _PushParser()
    filtered: list[str] = []
    if pull is not None:
        for item in options:
            if not isinstance(item, str):
                raise RemoteProtocolError("pushed option is not text")
        options, filtered = pull.apply(options)
    for item in options:
        parser.feed(item)
    settings = parser.finish()
    settings.filtered = filtered
    return settings


# ---- value checkers (all raise RemoteProtocolError) ----------------------------------


def _fail(name: str, msg: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"pushed option '{name}': {msg}")


def _checked(name: str, check: Callable[[list[str]], _T], args: list[str]) -> _T:
    """Run a shared netopts check; its Invalid becomes a RemoteProtocolError."""
    try:
        return check(args)
    except Invalid as exc:
        raise _fail(name, str(exc)) from None


def _netmask(name: str, value: str) -> str:
    return _checked(name, lambda a: netopts.netmask(a[0]), [value])


def _integer(name: str, value: str, lo: int, hi: int) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise _fail(name, f"{value!r} is not a number")
    n = int(value)
    if not lo <= n <= hi:
        raise _fail(name, f"{n} is out of range {lo}..{hi}")
    return n


def _domain(name: str, value: str) -> str:
    return _checked(name, lambda a: netopts.domain(a[0]), [value])


def _nargs(name: str, args: list[str], lo: int, hi: int) -> None:
    if not lo <= len(args) <= hi:
        raise _fail(name, f"expects {lo}..{hi} arguments, got {len(args)}")


class _PushParser:
    """Walks pushed options in order, filling one :class:`PushedSettings`."""

    def __init__(self) -> None:
        self.s = PushedSettings()
        self.dhcp_dns: list[str] = []
        self.dhcp_domains: list[str] = []
        self.dns_servers: dict[int, list[str]] = {}
        self.dns_search: list[str] | None = None
        self.dns_resolve: dict[int, list[str]] = {}
        self.proto_flags: set[str] = set()

    def warn(self, text: str) -> None:
        self.s.warnings.append(text)

    def feed(self, item: str) -> None:
        if not isinstance(item, str):
            raise RemoteProtocolError("pushed option is not text")
        self.s.options.append(redact_option(item))  # options are logged and repr'd
        try:
            tokens = tokenize_line(item)
        except ConfigError as exc:
            raise RemoteProtocolError(
                f"malformed pushed option {redact_option(item)[:40]!r}: {exc}"
            ) from None
        if not tokens:
            return
        name, args = tokens[0], tokens[1:]
        handler = getattr(self, "_opt_" + name.replace("-", "_"), None)
        if handler is not None and name.isascii() and name.replace("-", "").isalnum():
            try:
                handler(name, args)
            except RemoteProtocolError as exc:
                if name not in SKIPPABLE:
                    raise
                self.warn(f"{exc}; the option was ignored (as OpenVPN does)")
        elif name in _SILENT_PUSH:
            return
        else:
            self.warn(f"pushed option '{name[:40]}' is not supported and was ignored")

    def finish(self) -> PushedSettings:
        s = self.s
        if self.dns_servers:
            s.dns_servers = [a for prio in sorted(self.dns_servers) for a in self.dns_servers[prio]]
        else:
            s.dns_servers = self.dhcp_dns
        s.dns_domains = self.dns_search if self.dns_search is not None else self.dhcp_domains
        for prio in self.dns_resolve:
            if prio not in self.dns_servers:
                raise _fail("dns", f"dns server {prio} has resolve-domains but no address")
        if self.dns_servers and set(self.dns_servers) <= set(self.dns_resolve):
            rd = [d for prio in sorted(self.dns_resolve) for d in self.dns_resolve[prio]]
            s.dns_resolve_domains = list(dict.fromkeys(rd))
        s.protocol_flags = frozenset(self.proto_flags)
        if "tls-ekm" in self.proto_flags:
            s.key_derivation_ekm = True
        if s.redirect_gateway is not None and "ipv6" in s.redirect_gateway:
            s.redirect_gateway_ipv6 = True
        nets = {r.network for r in s.routes_ipv6}
        if "::/0" in nets or {"::/1", "8000::/1"} <= nets:
            s.redirect_gateway_ipv6 = True
        if s.ifconfig_local is not None and s.ifconfig_remote_or_mask is not None:
            if s.topology == "subnet":
                _netmask("ifconfig", s.ifconfig_remote_or_mask)
        return s

    # ---- handlers: _opt_<name with - as _>(name, args) -----------------------------

    def _opt_ifconfig(self, name: str, args: list[str]) -> None:
        local, other = _checked(name, netopts.ifconfig, args)
        self.s.ifconfig_local, self.s.ifconfig_remote_or_mask = local, other

    def _opt_ifconfig_ipv6(self, name: str, args: list[str]) -> None:
        local, remote = _checked(name, netopts.ifconfig_ipv6, args)
        self.s.ifconfig_ipv6_local, self.s.ifconfig_ipv6_remote = local, remote

    def _opt_topology(self, name: str, args: list[str]) -> None:
        self.s.topology = _checked(name, netopts.topology, args)
        self.s.topology_pushed = True

    def _opt_route(self, name: str, args: list[str]) -> None:
        self.s.routes.append(_checked(name, netopts.route, args))

    def _opt_route_ipv6(self, name: str, args: list[str]) -> None:
        self.s.routes_ipv6.append(_checked(name, netopts.route_ipv6, args))

    def _opt_route_gateway(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 1, 1)
        self.s.route_gateway = "dhcp" if args[0] == "dhcp" else _checked(
            name, lambda a: netopts.ipv4(a[0]), args
        )

    def _opt_route_metric(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 1, 1)
        self.s.route_metric = _checked(name, lambda a: netopts.metric(a[0]), args)

    def _opt_block_ipv6(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 0, 0)
        self.s.block_ipv6 = True

    def _opt_redirect_gateway(self, name: str, args: list[str]) -> None:
        flags, unknown = netopts.redirect_flags(args)
        for flag in unknown:
            self.warn(
                f"pushed option 'redirect-gateway' flag '{flag[:40]}' is not supported and was ignored"
            )
        self.s.redirect_gateway = netopts.merge_redirect(self.s.redirect_gateway, flags)

    def _opt_dhcp_option(self, name: str, args: list[str]) -> None:
        value = _checked(name, netopts.dhcp_option, args)
        if value is None:
            self.warn(
                f"pushed option 'dhcp-option {args[0][:40]}' is not supported and was ignored"
            )
            return
        kind, text = value
        target = self.dhcp_dns if kind == "dns" else self.dhcp_domains
        if kind == "dns" or text not in target:
            target.append(text)

    def _opt_dns(self, name: str, args: list[str]) -> None:
        if len(args) >= 2 and args[0] == "search-domains":
            self.dns_search = self.dns_search or []
            self.dns_search.extend(_domain(name, d) for d in args[1:])
            return
        if len(args) >= 4 and args[0] == "server":
            prio = _integer(name, args[1].lstrip("-"), 0, 127)
            if args[1].startswith("-"):
                prio = -prio
            if args[2] == "address":
                addrs = self.dns_servers.setdefault(prio, [])
                for a in args[3:]:
                    addrs.append(self._dns_address(name, a))
                return
            if args[2] == "resolve-domains":
                self.dns_resolve.setdefault(prio, []).extend(_domain(name, d) for d in args[3:])
                return
        self.warn(f"pushed option 'dns {' '.join(args[:3])[:60]}' is not supported and was ignored")

    def _dns_address(self, name: str, value: str) -> str:
        """An address of ``dns server N address``, which may carry a port."""

        def warn(text: str) -> None:
            self.warn(f"pushed {text}")

        return _checked(name, lambda a: netopts.dns_address(a[0], warn), [value])

    def _timer(self, name: str, args: list[str]) -> int:
        _nargs(name, args, 1, 1)
        return _integer(name, args[0], 0, MAX_SECONDS)

    def _opt_ping(self, name: str, args: list[str]) -> None:
        self.s.ping = self._timer(name, args)

    def _opt_ping_restart(self, name: str, args: list[str]) -> None:
        self.s.ping_restart = self._timer(name, args)

    def _opt_peer_id(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 1, 1)
        self.s.peer_id = _integer(name, args[0], 0, MAX_PEER_ID)

    def _opt_cipher(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 1, 1)
        if not _CIPHER_RE.match(args[0]):
            raise _fail(name, f"invalid cipher name {args[0][:40]!r}")
        self.s.cipher = args[0].upper()

    def _opt_key_derivation(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 1, 1)
        if args[0] != "tls-ekm":
            raise _fail(name, f"unknown key derivation {args[0][:40]!r}")
        self.s.key_derivation_ekm = True

    def _opt_protocol_flags(self, name: str, args: list[str]) -> None:
        for flag in args:
            if flag in PROTOCOL_FLAGS:
                self.proto_flags.add(flag)
            else:
                self.warn(f"pushed protocol flag '{flag[:40]}' is not supported and was ignored")

    def _opt_tun_mtu(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 1, 2)
        self.s.tun_mtu = _integer(name, args[0], TUN_MTU_MIN, TUN_MTU_MAX)

    def _opt_auth_token(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 1, 1)
        if not _TOKEN_RE.match(args[0]):
            raise _fail(name, "token has invalid characters")
        self.s.auth_token = args[0]

    def _opt_comp_lzo(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 0, 1)
        if args == ["no"]:
            self.s.compression = "lzo-no"
        else:
            raise _fail(
                name,
                "the server asked for LZO compression, which is unsafe (VORACLE) and not supported",
            )

    def _opt_compress(self, name: str, args: list[str]) -> None:
        _nargs(name, args, 0, 1)
        alg = args[0] if args else "stub"
        if alg in ("stub", "stub-v2"):
            self.s.compression = alg
        else:
            raise _fail(
                name,
                f"the server asked for {alg[:20]!r} compression, which is unsafe (VORACLE) and not supported",
            )

    def _opt_push_continuation(self, name: str, args: list[str]) -> None:
        continuation_value(" ".join([name, *args]))
