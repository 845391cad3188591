"""Pure conversions between the engine's settings and the protocol's messages.

The tunnel turns what the server pushed (a `TunConfig` plus `PushedSettings`) into a
`NetworkSettingsRequest`; the manager turns that request back into a `TunConfig` for
`NetConfigurator`. The request uses Apple's vocabulary (addresses with masks or prefix
lengths, included and excluded routes), so the two mappings must round-trip: the
redirect-gateway halves travel as ordinary included routes, and the host route to the VPN
server travels as an excluded route.
"""

from __future__ import annotations

import ipaddress
import re

from trivpn.errors import RemoteProtocolError
from trivpn.manager import manager_pb2 as pb
from trivpn.profile.checks import Invalid
from trivpn.profile.netopts import domain
from trivpn.tun.tunplan import REDIRECT_DEF1_V4, REDIRECT_DEF1_V6, TunConfig

__all__ = [
    "dns_from_request",
    "network_settings_request",
    "parse_remote",
    "tun_config_from_request",
    "tunnel_overhead",
]

_REMOTE = re.compile(r"^\[?([0-9A-Fa-f:.]+)\]?:(\d+) \((udp|tcp)([46])\)$")
#: Data-channel overhead on top of the outer IP and transport headers: opcode + peer-id
#: (4), packet id (4) and the AEAD tag (16).
DATA_OVERHEAD = 24
#: Upper bounds on what a request may hold (the manager's own sanity limits).
MAX_ADDRESSES = 64
MAX_ROUTES = 4096
MAX_DNS = 64


def parse_remote(remote: str) -> tuple[str, str, int] | None:
    """(address, "udp"/"tcp", 4/6) from an endpoint description like "[fd00::1]:1194 (udp6)"."""
    m = _REMOTE.match(remote)
    if m is None:
        return None
    return m.group(1), m.group(3), int(m.group(4))


def tunnel_overhead(remote: str) -> int:
    """Bytes each tunnelled packet costs on the wire (outer IP + UDP/TCP + OpenVPN + tag)."""
    parsed = parse_remote(remote)
    ip_header, transport = 20, 8
    if parsed is not None:
        ip_header = 40 if parsed[2] == 6 else 20
        transport = 8 if parsed[1] == "udp" else 20 + 2  # TCP header + OpenVPN's length prefix
    return ip_header + transport + DATA_OVERHEAD


def network_settings_request(
    cfg: TunConfig,
    *,
    remote: str,
    dns_servers: list[str],
    dns_domains: list[str],
) -> pb.NetworkSettingsRequest:
    """What the manager must configure for the tunnel described by `cfg`."""
    parsed = parse_remote(remote)
    req = pb.NetworkSettingsRequest(
        tunnel_overhead_bytes=tunnel_overhead(remote),
        mtu=cfg.mtu,
        tunnel_remote_address=parsed[0] if parsed else "",
    )
    if dns_servers or dns_domains:
        req.dns_settings.servers.extend(dns_servers)
        req.dns_settings.search_domains.extend(dns_domains)
        req.dns_settings.domain_name = dns_domains[0] if dns_domains else ""
    v4_routes = list(cfg.routes)
    if cfg.redirect_gateway:
        v4_routes += [(n, None, None) for n in REDIRECT_DEF1_V4]
    if cfg.ipv4 is not None or v4_routes:
        v4 = req.ipv4_settings
        if cfg.ipv4 is not None:
            address, prefix, peer = cfg.ipv4
            v4.addrs.append(address)
            v4.subnet_masks.append(str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask))
            v4.router = peer or ""
        for network, gateway, _metric in v4_routes:
            net = ipaddress.IPv4Network(network, strict=False)
            v4.included_routes.add(
                destination=str(net.network_address), mask=str(net.netmask), router=gateway or ""
            )
    v6_routes = list(cfg.routes6)
    if cfg.redirect_gateway6:
        v6_routes += [(n, None, None) for n in REDIRECT_DEF1_V6]
    if cfg.ipv6 is not None or v6_routes:
        v6 = req.ipv6_settings
        if cfg.ipv6 is not None:
            v6.addrs.append(cfg.ipv6[0])
            v6.prefix_lengths.append(cfg.ipv6[1])
        for network, gateway, _metric in v6_routes:
            net6 = ipaddress.IPv6Network(network, strict=False)
            v6.included_routes.add(
                destination=str(net6.network_address), prefix_length=net6.prefixlen, router=gateway or ""
            )
    for server in cfg.server_addresses:
        ip = ipaddress.ip_address(server)
        if ip.version == 4:
            req.ipv4_settings.excluded_routes.add(destination=str(ip), mask="255.255.255.255")
        else:
            req.ipv6_settings.excluded_routes.add(destination=str(ip), prefix_length=128)
    return req


def _bad(what: str, value: object) -> RemoteProtocolError:
    return RemoteProtocolError(f"network settings: bad {what} {str(value)[:60]!r}")


def _ip(text: str, version: int, what: str) -> str:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise _bad(what, text) from None
    if ip.version != version:
        raise _bad(what, text)
    return str(ip)


def tun_config_from_request(req: pb.NetworkSettingsRequest) -> TunConfig:
    """The manager's reading of a request; RemoteProtocolError for anything malformed."""
    cfg = TunConfig(mtu=req.mtu or 1500)
    v4, v6 = req.ipv4_settings, req.ipv6_settings
    if len(v4.addrs) > MAX_ADDRESSES or len(v6.addrs) > MAX_ADDRESSES:
        raise RemoteProtocolError("network settings: too many addresses")
    n_routes = sum(len(x) for x in (v4.included_routes, v4.excluded_routes, v6.included_routes, v6.excluded_routes))
    if n_routes > MAX_ROUTES:
        raise RemoteProtocolError("network settings: too many routes")
    if len(v4.addrs) != len(v4.subnet_masks) or len(v6.addrs) != len(v6.prefix_lengths):
        raise RemoteProtocolError("network settings: addresses and masks do not pair up")
    if len(v4.addrs) > 1 or len(v6.addrs) > 1:
        raise RemoteProtocolError("network settings: more than one address per family is not supported")
    if v4.addrs:
        address = _ip(v4.addrs[0], 4, "IPv4 address")
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{v4.subnet_masks[0]}").prefixlen
        except ValueError:
            raise _bad("subnet mask", v4.subnet_masks[0]) from None
        peer = _ip(v4.router, 4, "router") if v4.router else None
        cfg.ipv4 = (address, prefix, peer)
    if v6.addrs:
        if not 0 < v6.prefix_lengths[0] <= 128:
            raise _bad("IPv6 prefix length", v6.prefix_lengths[0])
        cfg.ipv6 = (_ip(v6.addrs[0], 6, "IPv6 address"), v6.prefix_lengths[0])
    halves4: set[str] = set()
    for r in v4.included_routes:
        try:
            net = ipaddress.IPv4Network(f"{r.destination}/{r.mask}", strict=False)
        except ValueError:
            raise _bad("IPv4 route", f"{r.destination}/{r.mask}") from None
        gw = _ip(r.router, 4, "route router") if r.router else None
        if str(net) in REDIRECT_DEF1_V4 and gw is None:
            halves4.add(str(net))
        else:
            cfg.routes.append((str(net), gw, None))
    halves6: set[str] = set()
    for r6 in v6.included_routes:
        try:
            net6 = ipaddress.IPv6Network(f"{r6.destination}/{r6.prefix_length}", strict=False)
        except ValueError:
            raise _bad("IPv6 route", f"{r6.destination}/{r6.prefix_length}") from None
        gw6 = _ip(r6.router, 6, "route router") if r6.router else None
        if str(net6) in REDIRECT_DEF1_V6 and gw6 is None:
            halves6.add(str(net6))
        else:
            cfg.routes6.append((str(net6), gw6, None))
    # Both halves make redirect-gateway (which also keeps the server reachable); one alone
    # is an ordinary route.
    cfg.redirect_gateway = halves4 == set(REDIRECT_DEF1_V4)
    if not cfg.redirect_gateway:
        cfg.routes += [(n, None, None) for n in sorted(halves4)]
    cfg.redirect_gateway6 = halves6 == set(REDIRECT_DEF1_V6)
    if not cfg.redirect_gateway6:
        cfg.routes6 += [(n, None, None) for n in sorted(halves6)]
    for r in v4.excluded_routes:
        if r.mask not in ("", "255.255.255.255"):
            raise _bad("excluded IPv4 route (only host routes)", f"{r.destination}/{r.mask}")
        cfg.server_addresses.append(_ip(r.destination, 4, "excluded route"))
    for r6 in v6.excluded_routes:
        if r6.prefix_length not in (0, 128):
            raise _bad("excluded IPv6 route (only host routes)", f"{r6.destination}/{r6.prefix_length}")
        cfg.server_addresses.append(_ip(r6.destination, 6, "excluded route"))
    return cfg


def dns_from_request(req: pb.NetworkSettingsRequest) -> tuple[list[str], list[str]]:
    """(servers, search domains) for the manager's ``resolvectl`` calls, checked.

    The request comes from the unprivileged tunnel and ends up as arguments of a command run
    as root: only plain IP addresses (no ``%ifname`` scope, which would send the queries
    out of another interface) and domain names (never an option such as ``--interface``)
    pass, as the tunnel's own PUSH_REPLY parser allows.
    """
    dns = req.dns_settings
    if len(dns.servers) > MAX_DNS or len(dns.search_domains) > MAX_DNS:
        raise RemoteProtocolError("network settings: too many DNS servers or domains")
    servers = []
    for text in dns.servers:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise _bad("DNS server", text) from None
        if getattr(ip, "scope_id", None):
            raise _bad("DNS server", text)
        servers.append(str(ip))
    domains = []
    for name in dns.search_domains:
        try:
            domains.append(domain(name))
        except Invalid:
            raise _bad("DNS domain", name) from None
    return servers, domains
