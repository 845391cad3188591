"""What a session's tunnel looks like to the host: pushed and profile options as a plan.

`net_plan` merges the PUSH_REPLY with the profile's own routing and DNS options into what
`trivpn connect` applies (TUN addresses and routes, DNS, block-ipv6); `tun_config_from` is
its TUN part; `describe_tunnel` is the one "tunnel up" line users and tests read. Pure:
nothing here touches the system (`trivpn.session.netapply` does).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from trivpn.errors import ConfigError, FatalError
from trivpn.profile.model import Route
from trivpn.profile.netopts import is_route_name, merge_redirect
from trivpn.profile.profile import Profile
from trivpn.profile.push import PushedSettings
from trivpn.records import dataclass
from trivpn.tun.tunplan import TunConfig, validate

__all__ = [
    "DnsSettings",
    "NetPlan",
    "TunnelInfo",
    "describe_tunnel",
    "net_plan",
    "tun_config_from",
]

log = logging.getLogger("trivpn")


@dataclass(slots=True)
class TunnelInfo:
    """What `connect` returns once the tunnel is up."""

    settings: PushedSettings
    cipher: str
    key_derivation: str
    peer_subject: str
    tls_version: str
    remote: str
    ifname: str | None = None
    tun_config: TunConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)


#: The IPv6 routes of OpenVPN's ``redirect-gateway ipv6``: all global unicast and ULA space
#: (leaving link-local and multicast on their links).
REDIRECT_NETS6 = ("::/3", "2000::/4", "3000::/4", "fc00::/7")
#: Where ICMPv6 "no route" answers of block-ipv6 come from without an IPv6 peer (OpenVPN's).
BLOCK_IPV6_SOURCE = "fe80::7"


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """The DNS the tunnel asks for: servers, domains, and whether all names go there."""

    servers: tuple[str, ...]
    domains: tuple[str, ...] = ()
    #: every query goes to these servers (redirect-gateway), not just the domains
    default_route: bool = True
    #: names only these servers resolve (`dns server N resolve-domains`): routing domains
    #: that are not search domains
    routing_domains: tuple[str, ...] = ()


@dataclass(slots=True)
class NetPlan:
    """Everything `trivpn connect` applies for one tunnel: the TUN, DNS and block-ipv6."""

    tun: TunConfig
    dns: DnsSettings | None = None
    #: answer IPv6 read from the TUN with ICMPv6 "no route" from this source (None: off)
    block_ipv6_source: str | None = None


def tun_config_from(
    settings: PushedSettings, server_address: str, profile: Profile | None = None
) -> TunConfig:
    """Translate pushed options (and the profile's own routing options) for the TUN layer."""
    return net_plan(settings, server_address, profile).tun


def net_plan(
    settings: PushedSettings,
    server_address: str,
    profile: Profile | None = None,
    *,
    kernel: bool = False,
    names: Mapping[str, str | None] | None = None,
) -> NetPlan:
    """What to apply, from the PUSH_REPLY and the profile, with OpenVPN's precedence.

    `kernel`: the plan goes to a kernel TUN, so what the kernel would refuse (an MTU below
    1280 with IPv6, a prefix length of 0) is a FatalError here, which restarts the session,
    rather than a ConfigError when applied, which would end the run and so fail open.

    The server's ifconfig, topology, route-gateway, route-metric and redirect-gateway win
    over the profile's; routes and DNS servers add up (the profile's first). IPv4 routes
    go via the VPN gateway (route-gateway, or the net30/p2p peer) as OpenVPN sets them,
    IPv6 routes straight into the TUN. Any route that would swallow the VPN server's own
    address gets a host route for the server through the path it uses now.

    `names`: the IPv4 address of each host name in the profile's routes (None: it did not
    resolve); a route whose name has none is skipped with a warning, as OpenVPN skips it.
    """
    p = profile if profile is not None else Profile(remotes=[])
    cfg = TunConfig(
        mtu=settings.tun_mtu or p.tun_mtu or 1500, kernel_picks_device=True, skip_refused_routes=True
    )
    topology = settings.topology if settings.topology_pushed or p.topology is None else p.topology
    local, other = settings.ifconfig_local, settings.ifconfig_remote_or_mask
    if local is None and p.ifconfig is not None:
        local, other = p.ifconfig
    if local:
        if topology == "subnet":
            if not other:
                raise FatalError("'ifconfig' lacks a netmask for topology subnet")
            try:
                prefix = ipaddress.IPv4Network(f"0.0.0.0/{other}").prefixlen
            except ValueError:  # e.g. a net30 peer address with the profile's topology subnet
                raise FatalError(f"'ifconfig {local} {other}': {other} is not a netmask (topology subnet)") from None
            cfg.ipv4 = (local, prefix, None)
        else:
            cfg.ipv4 = (local, 32, other)
    local6 = settings.ifconfig_ipv6_local
    remote6 = settings.ifconfig_ipv6_remote
    if local6 is None and p.ifconfig_ipv6 is not None:
        local6, remote6 = p.ifconfig_ipv6
    if local6:
        iface = ipaddress.IPv6Interface(local6)
        cfg.ipv6 = (str(iface.ip), iface.network.prefixlen)

    gateway = settings.route_gateway if settings.route_gateway != "dhcp" else None
    gateway = gateway or p.route_gateway
    if gateway is None and topology != "subnet" and cfg.ipv4 is not None:
        gateway = cfg.ipv4[2]
    if cfg.ipv4 is None:
        gateway = None  # no IPv4 on the TUN: a gateway there would be unreachable
    metric = settings.route_metric if settings.route_metric is not None else p.route_metric
    server = _ip_or_none(server_address)
    for r in [*p.routes, *settings.routes]:
        _add_route4(cfg, _named(r, names or {}), gateway, metric, server)
    for r6 in [*p.routes_ipv6, *settings.routes_ipv6]:
        if r6.gateway == "net_gateway":
            cfg.bypass.append(r6.network)
            continue
        cfg.routes6.append((r6.network, None, r6.metric if r6.metric is not None else metric))

    flags = p.redirect_gateway
    if settings.redirect_gateway is not None:  # pushed flags add to the profile's (OpenVPN)
        flags = merge_redirect(flags, settings.redirect_gateway)
    block6 = settings.block_ipv6 or p.block_ipv6
    local_server = False
    if flags is not None:
        if "def1" not in flags:
            log.info("redirect-gateway without def1 is applied as def1 (the default route stays)")
        cfg.redirect_gateway = "!ipv4" not in flags
        cfg.block_local = "block-local" in flags and cfg.redirect_gateway
        cfg.redirect_gateway6 = "ipv6" in flags
        cfg.redirect_via = gateway if cfg.redirect_gateway else None
        local_server = "local" in flags
    if block6:
        cfg.redirect_gateway6 = True  # nothing may leave outside the tunnel
    cfg.redirect_nets6 = REDIRECT_NETS6
    if cfg.redirect_gateway6:
        cfg.redirect_metric6 = metric  # OpenVPN: route-metric applies to ::/3 and the rest
    if server is not None and not local_server:
        redirected = cfg.redirect_gateway if server.version == 4 else cfg.redirect_gateway6
        if redirected:
            cfg.server_addresses = [str(server)]
        elif _covered(server, cfg):
            cfg.bypass.append(str(server))
    if kernel:
        try:
            validate(cfg)
        except ConfigError as exc:
            raise FatalError(str(exc)) from None
    return NetPlan(
        cfg,
        _dns(settings, p, cfg.redirect_gateway or cfg.redirect_gateway6),
        (remote6 or BLOCK_IPV6_SOURCE) if block6 else None,
    )


def _ip_or_none(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _named(r: Route, names: Mapping[str, str | None]) -> Route | None:
    """`r` with its host names replaced by their addresses; None if one has none."""
    net, gw = r.network, r.gateway
    for name in (net, gw):
        if name is not None and is_route_name(name) and names.get(name) is None:
            log.warning("route %s %s: the name %s did not resolve to an IPv4 address; skipped (as OpenVPN does)",
                        r.network, r.netmask, name)
            return None
    if is_route_name(net):
        net = names[net] or net
    if gw is not None and is_route_name(gw):
        gw = names[gw] or gw
    return Route(net, r.netmask, gw, r.metric)


def _add_route4(
    cfg: TunConfig,
    r: Route | None,
    gateway: str | None,
    metric: int | None,
    server: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> None:
    """One IPv4 route, its keywords resolved: vpn_gateway, remote_host, net_gateway."""
    if r is None:
        return
    network: str | None = r.network
    if network == "vpn_gateway":
        network = gateway
    elif network == "remote_host":
        network = str(server) if server is not None and server.version == 4 else None
    elif network == "net_gateway":
        network = None
    if network is None:
        log.warning("route %s %s: cannot resolve %s here; skipped", r.network, r.netmask, r.network)
        return
    net = ipaddress.IPv4Network(f"{network}/{r.netmask}", strict=False)
    if r.gateway == "net_gateway":
        cfg.bypass.append(str(net))
        return
    via = gateway if r.gateway in (None, "vpn_gateway") else r.gateway
    if via == "remote_host":
        log.warning("route %s %s remote_host is not supported; skipped", r.network, r.netmask)
        return
    cfg.routes.append((str(net), via, r.metric if r.metric is not None else metric))


def _covered(server: ipaddress.IPv4Address | ipaddress.IPv6Address, cfg: TunConfig) -> bool:
    """Would one of the tunnel's routes carry packets to the VPN server itself?"""
    routes = cfg.routes if server.version == 4 else cfg.routes6
    return any(server in ipaddress.ip_network(net, strict=False) for net, _gw, _m in routes)


def _dns(settings: PushedSettings, p: Profile, redirect: bool) -> DnsSettings | None:
    if p.no_dns:
        return None
    servers = list(dict.fromkeys([*p.dns_servers, *settings.dns_servers]))
    domains = list(dict.fromkeys([*p.dns_domains, *settings.dns_domains]))
    if not servers:
        return None
    # split DNS by resolve-domains only if no server of the profile's takes every name
    routing = () if p.dns_servers else tuple(settings.dns_resolve_domains)
    return DnsSettings(
        tuple(servers), tuple(domains), default_route=redirect or not (domains or routing),
        routing_domains=routing,
    )


def describe_tunnel(info: TunnelInfo) -> str:
    """The one "tunnel up" line: addresses, routes and the negotiated cipher."""
    cfg = info.tun_config
    parts = []
    if cfg is not None:
        if cfg.ipv4:
            a, p, peer = cfg.ipv4
            parts.append(f"{a}/{p}" + (f" peer {peer}" if peer else ""))
        if cfg.ipv6:
            parts.append(f"{cfg.ipv6[0]}/{cfg.ipv6[1]}")
        routes = [r[0] for r in cfg.routes + cfg.routes6]
        if cfg.redirect_gateway:
            routes.append("0.0.0.0/1+128.0.0.0/1")
        if cfg.redirect_gateway6:
            routes.append("+".join(cfg.redirect_nets6))
        if routes:
            parts.append("routes " + ", ".join(routes))
    where = f" on {info.ifname}" if info.ifname else ""
    return (
        f"tunnel up{where}: {'; '.join(parts) or 'no addresses'}; "
        f"cipher {info.cipher} ({info.key_derivation})"
    )
