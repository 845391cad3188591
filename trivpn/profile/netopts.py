"""Routing and DNS option values, shared by the profile parser and the pushed options.

The same option means the same thing in a profile and in a PUSH_REPLY (``route``,
``route-ipv6``, ``redirect-gateway``, ``dhcp-option``, ``dns``, ``ifconfig``...), so both
read it with the functions here. They are pure and raise
:class:`~trivpn.profile.checks.Invalid` with a short message; the profile parser turns
that into ``line N: option 'X': message`` and the push parser into a
:class:`~trivpn.errors.RemoteProtocolError`.

:class:`PullPolicy` is the user's say over what the server may push: ``pull-filter``
(first matching rule wins, matched as a prefix of the option text, as OpenVPN does) and
``route-nopull`` (drops the routing and DNS options, the same set OpenVPN drops).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence

from trivpn.errors import RemoteProtocolError
from trivpn.profile.checks import Invalid, integer, nargs
from trivpn.profile.model import Route, Route6
from trivpn.records import dataclass

__all__ = [
    "MAX_METRIC",
    "REDIRECT_FLAGS",
    "ROUTE_KEYWORDS",
    "TOPOLOGIES",
    "PullPolicy",
    "PushRejected",
    "dhcp_option",
    "dns_address",
    "domain",
    "ifconfig",
    "ifconfig_ipv6",
    "ipv4",
    "ipv6",
    "is_route_name",
    "merge_redirect",
    "metric",
    "netmask",
    "pull_filter",
    "redirect_flags",
    "route",
    "route_ipv6",
]

#: Largest route metric accepted.
MAX_METRIC = 0x7FFFFFFF
#: Longest DNS name.
MAX_DOMAIN_LEN = 253
ROUTE_KEYWORDS = frozenset({"vpn_gateway", "net_gateway", "remote_host"})
TOPOLOGIES = frozenset({"net30", "p2p", "subnet"})
REDIRECT_FLAGS = frozenset(
    {"local", "autolocal", "def1", "bypass-dhcp", "bypass-dns", "block-local", "ipv6", "!ipv4"}
)
PULL_FILTER_ACTIONS = frozenset({"accept", "ignore", "reject"})
#: What ``route-nopull`` keeps the server from setting (OpenVPN's route and DHCP/DNS classes).
NOPULL_OPTIONS = frozenset(
    {
        "route",
        "route-ipv6",
        "route-metric",
        "redirect-gateway",
        "redirect-private",
        "block-ipv6",
        "client-nat",
        "dhcp-option",
        "dns",
    }
)

_DOMAIN_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_.])?$")


def ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise Invalid(f"{value[:60]!r} is not an IPv4 address") from None


def ipv6(value: str) -> str:
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        raise Invalid(f"{value[:60]!r} is not an IPv6 address") from None


def netmask(value: str) -> str:
    mask = ipv4(value)
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{mask}")
    except ValueError:
        raise Invalid(f"{value!r} is not a valid netmask") from None
    return mask


def metric(value: str) -> int:
    return integer(value, 0, MAX_METRIC)


def domain(value: str) -> str:
    if len(value) > MAX_DOMAIN_LEN or not _DOMAIN_RE.match(value):
        raise Invalid(f"{value[:60]!r} is not a valid domain name")
    return value


def route(args: list[str], *, names: bool = False) -> Route:
    """``route network [netmask [gateway [metric]]]``; ``default`` keeps a default.

    ``names``: the network and gateway may be host names (a profile's route, which OpenVPN
    resolves when it adds the route); a pushed one may not (OpenVPN: only with
    ``allow-pull-fqdn``).
    """
    nargs(args, 1, 4)
    net = _route_host(args[0], names)
    mask = "255.255.255.255"
    if len(args) > 1 and args[1] != "default":
        mask = netmask(args[1])
    gateway: str | None = None
    if len(args) > 2 and args[2] != "default":
        gateway = _route_host(args[2], names)
    value: int | None = None
    if len(args) > 3 and args[3] != "default":
        value = metric(args[3])
    return Route(net, mask, gateway, value)


def is_route_name(value: str) -> bool:
    """Is this route network or gateway a host name (neither an address nor a keyword)?"""
    if value in ROUTE_KEYWORDS:
        return False
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return True
    return False


def _route_host(value: str, names: bool) -> str:
    """A route's network or gateway: a keyword, an IPv4 address or (``names``) a host name.
    A name must have a label that is not all digits: ``10.0.0.300`` is a typo, not a name."""
    if value in ROUTE_KEYWORDS:
        return value
    if names and _DOMAIN_RE.match(value) and len(value) <= MAX_DOMAIN_LEN:
        labels = value.rstrip(".").split(".")
        if all(0 < len(label) < 64 for label in labels) and not labels[-1].isdigit():
            return value
    return ipv4(value)


def route_ipv6(args: list[str]) -> Route6:
    """``route-ipv6 network/bits [gateway [metric]]``; without ``/bits`` a /64, as OpenVPN
    reads it (not a host route: the rest of the /64 would go outside the tunnel)."""
    nargs(args, 1, 3)
    text = args[0] if "/" in args[0] else f"{args[0]}/64"
    try:
        net = ipaddress.IPv6Network(text, strict=False)
    except ValueError:
        raise Invalid(f"{args[0][:60]!r} is not an IPv6 network") from None
    gateway: str | None = None
    if len(args) > 1 and args[1] != "default":
        gateway = args[1] if args[1] in ROUTE_KEYWORDS else ipv6(args[1])
    value: int | None = None
    if len(args) > 2 and args[2] != "default":
        value = metric(args[2])
    return Route6(str(net), gateway, value)


def redirect_flags(args: list[str]) -> tuple[frozenset[str], list[str]]:
    """The known flags of ``redirect-gateway`` and the unknown ones (warned about)."""
    flags = set(args)
    return frozenset(flags & REDIRECT_FLAGS), sorted(flags - REDIRECT_FLAGS)


def merge_redirect(old: frozenset[str] | None, new: frozenset[str]) -> frozenset[str]:
    """A later ``redirect-gateway`` line adds its flags to the earlier ones, as OpenVPN's
    client ORs them (profile lines, then pushed lines); ``!ipv4`` holds only if the last
    line says it (any other line turns IPv4 redirection back on). Replacing instead would
    drop an earlier ``ipv6`` and leak IPv6 outside the tunnel."""
    return ((old or frozenset()) - {"!ipv4"}) | new


def dhcp_option(args: list[str]) -> tuple[str, str] | None:
    """``("dns", address)`` or ``("domain", name)``; None for kinds we do not use."""
    nargs(args, 1, 2)
    kind = args[0].upper()
    if kind in ("DNS", "DNS6") and len(args) == 2:
        value = args[1]
        if ":" in value:
            return "dns", ipv6(value)
        if kind == "DNS6":
            raise Invalid(f"{value[:60]!r} is not an IPv6 address")
        return "dns", ipv4(value)
    if kind in ("DOMAIN", "DOMAIN-SEARCH", "ADAPTER_DOMAIN_SUFFIX") and len(args) == 2:
        return "domain", domain(args[1])
    return None


def dns_address(value: str, warn: Callable[[str], None]) -> str:
    """An address of ``dns server N address``, which may carry a port (only 53 is used)."""
    port = None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise Invalid(f"bad address {value[:60]!r}")
        port = rest[1:] or None
        addr = ipv6(host)
    elif value.count(":") == 1:
        host, port = value.split(":")
        addr = ipv4(host)
    elif ":" in value:
        addr = ipv6(value)
    else:
        addr = ipv4(value)
    if port is not None and integer(port, 1, 65535) != 53:
        warn(f"DNS server {value[:60]} uses port {port}; port 53 will be used")
    return addr


def ifconfig(args: list[str]) -> tuple[str, str]:
    """``ifconfig local remote-or-netmask``."""
    nargs(args, 2, 2)
    return ipv4(args[0]), ipv4(args[1])


def ifconfig_ipv6(args: list[str]) -> tuple[str, str | None]:
    """``ifconfig-ipv6 address[/bits] [remote]``: ``("addr/bits", remote)``."""
    nargs(args, 1, 2)
    addr, _, bits = args[0].partition("/")
    prefix = integer(bits, 0, 128) if bits else 64
    return f"{ipv6(addr)}/{prefix}", ipv6(args[1]) if len(args) == 2 else None


def topology(args: list[str]) -> str:
    nargs(args, 1, 1)
    if args[0] not in TOPOLOGIES:
        raise Invalid(f"unknown topology {args[0][:40]!r}")
    return args[0]


def pull_filter(args: list[str]) -> tuple[str, str]:
    """``pull-filter accept|ignore|reject text``."""
    nargs(args, 2, 2)
    if args[0] not in PULL_FILTER_ACTIONS:
        raise Invalid(f"unknown action {args[0][:40]!r} (accept, ignore or reject)")
    if not args[1]:
        raise Invalid("empty text matches every option; write the text to match")
    return args[0], args[1]


class PushRejected(RemoteProtocolError):
    """The server pushed an option a ``pull-filter reject`` rule names: restart, as OpenVPN."""


@dataclass(frozen=True, slots=True)
class PullPolicy:
    """What the user lets the server set: ``pull-filter`` rules and ``route-nopull``."""

    filters: tuple[tuple[str, str], ...] = ()
    route_nopull: bool = False

    def apply(self, options: Sequence[str]) -> tuple[list[str], list[str]]:
        """``(kept, dropped)``; PushRejected at the first option a reject rule matches."""
        kept: list[str] = []
        dropped: list[str] = []
        for item in options:
            text = item.lstrip()
            action = next((a for a, prefix in self.filters if text.startswith(prefix)), "accept")
            if action == "reject":
                raise PushRejected(f"pushed option {text[:60]!r} is rejected by pull-filter")
            name = text.split(None, 1)[0] if text.split() else ""
            if action == "ignore" or (self.route_nopull and name in NOPULL_OPTIONS):
                dropped.append(item)
            else:
                kept.append(item)
        return kept, dropped
