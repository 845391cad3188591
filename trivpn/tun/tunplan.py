"""What goes on the TUN (TunConfig) and its validated plan, before anything is touched.

Pure: `make_plan` checks a whole TunConfig (addresses, prefix lengths, MTU against IPv6,
gateways, metrics, redirect-gateway's routes, the hosts to pin outside the tunnel) and turns
it into the exact arguments of the netlink calls, or raises a one-line ConfigError.
`netconfig.NetConfigurator` applies a plan and undoes it; `validate` lets a client refuse
pushed settings the kernel could not take before it tears down anything (a restart, never a
failed apply that ends the run).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import field
from typing import Any

from trivpn.errors import ConfigError
from trivpn.records import dataclass

__all__ = [
    "IPV6_MIN_MTU", "REDIRECT_DEF1_V4", "REDIRECT_DEF1_V6", "SERVER_ROUTE6_METRIC", "TUN_MTU_MAX", "TUN_MTU_MIN",
    "Plan", "PlannedRoute", "TunConfig", "make_plan", "validate",
]

TUN_MTU_MIN = 68  # IPv4 minimum link MTU (RFC 791)
TUN_MTU_MAX = 65535
IPV6_MIN_MTU = 1280  # RFC 8200: an interface carrying IPv6 needs at least this

#: OpenVPN gives the IPv6 host route to its server metric 1 (IPv4's has none); so do we.
SERVER_ROUTE6_METRIC = 1

REDIRECT_DEF1_V4 = ("0.0.0.0/1", "128.0.0.0/1")
REDIRECT_DEF1_V6 = ("::/1", "8000::/1")


@dataclass(slots=True)
class TunConfig:
    """Everything to put on the TUN interface, usually derived from PUSH_REPLY options."""

    mtu: int = 1500
    ipv4: tuple[str, int, str | None] | None = None  # (address, prefixlen, p2p/net30 peer)
    ipv6: tuple[str, int] | None = None  # (address, prefixlen)
    routes: list[tuple[str, str | None, int | None]] = field(default_factory=list)
    routes6: list[tuple[str, str | None, int | None]] = field(default_factory=list)
    redirect_gateway: bool = False  # def1: 0.0.0.0/1 + 128.0.0.0/1 through the tunnel
    redirect_gateway6: bool = False  # redirect_nets6 (default ::/1 + 8000::/1)
    #: VPN servers, pinned to their current path when their family is redirected
    server_addresses: list[str] = field(default_factory=list)
    #: False: someone else pins the servers (trivpn connect: session/serverroute.py, so the
    #: pin can follow a new server without redoing the routes); block-local still sees them
    pin_servers: bool = True
    #: gateway of the def1 halves (OpenVPN routes them via the VPN gateway); None: on-link
    redirect_via: str | None = None
    #: the IPv6 routes that make up redirect_gateway6
    redirect_nets6: tuple[str, ...] = REDIRECT_DEF1_V6
    #: their metric: OpenVPN adds them as ordinary route-ipv6 lines, so route-metric applies
    #: (the IPv4 def1 halves have none)
    redirect_metric6: int | None = None
    #: an IPv4 route whose gateway the TUN cannot reach (a LAN router) is added without a
    #: device, so the kernel picks one, as OpenVPN's client adds it; False (the server, the
    #: manager): every route goes into the TUN
    kernel_picks_device: bool = False
    #: a `route`/`route-ipv6` the kernel refuses is skipped with a warning, as OpenVPN's
    #: client does (the client: ending the run would fail open); False: an error
    skip_refused_routes: bool = False
    #: hosts or networks routed through the path they use now, before the tunnel's routes
    #: (a server covered by an ordinary route, `net_gateway` routes)
    bypass: list[str] = field(default_factory=list)
    #: redirect-gateway block-local: the local network(s) of the default route's interface
    #: go into the tunnel too (in halves, via redirect_via), except the LAN gateway itself
    block_local: bool = False


@dataclass(frozen=True, slots=True)
class PlannedRoute:
    """One route of the plan, in the form the netlink call needs."""

    dst: str
    prefixlen: int
    gateway: str | None  # None: on-link through the TUN
    metric: int | None
    label: str
    #: through the TUN; a gateway the TUN cannot reach is left to the kernel, as OpenVPN does
    on_tun: bool = True
    #: if the kernel refuses it the apply fails (redirect routes; every route of the server
    #: and the manager); else it is skipped with a warning (see TunConfig.skip_refused_routes)
    required: bool = False


@dataclass(slots=True)
class Plan:
    """A validated TunConfig in the exact form the netlink calls need."""

    addrs: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # add_addr kwargs
    routes: list[PlannedRoute] = field(default_factory=list)
    #: (network, prefixlen) to pin to the path they use now: VPN servers, bypass routes
    host_routes: list[tuple[str, int]] = field(default_factory=list)


def _addr(text: str, version: int, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not an IP address") from None
    if address.version != version:
        raise ConfigError(f"{what}: {text} is not an IPv{version} address")
    return address


def _network(text: str, version: int, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a network (address/prefixlen)") from None
    if network.version != version:
        raise ConfigError(f"{what}: {text} is not an IPv{version} network")
    return network


def _on_tun(ipv4: tuple[str, int, str | None] | None, gateway: str) -> bool:
    """Is `gateway` reached through the TUN (its peer, or on its subnet)? A `route` whose
    gateway is elsewhere (a LAN router) is added without the TUN as its device, so the
    kernel picks the interface, as OpenVPN 2.6 adds it; forcing the TUN failed the run."""
    if ipv4 is None:
        return False
    local, prefixlen, peer = ipv4
    if gateway == peer:
        return True
    # the kernel's prefix route: the peer's network with a peer, else our own
    on_link = ipaddress.IPv4Network(f"{peer or local}/{prefixlen}", strict=False)
    return prefixlen < 32 and ipaddress.IPv4Address(gateway) in on_link


def make_plan(cfg: TunConfig) -> Plan:
    """Validate `cfg` completely before touching the system."""
    if not TUN_MTU_MIN <= cfg.mtu <= TUN_MTU_MAX:
        raise ConfigError(f"tun-mtu {cfg.mtu} is outside {TUN_MTU_MIN}..{TUN_MTU_MAX}")
    if cfg.ipv6 is not None and cfg.mtu < IPV6_MIN_MTU:
        raise ConfigError(f"tun-mtu {cfg.mtu} is below {IPV6_MIN_MTU}, too small for IPv6")
    plan = Plan()
    if cfg.ipv4 is not None:
        local, prefixlen, peer = cfg.ipv4
        local_ip = _addr(local, 4, "ifconfig")
        if not 0 < prefixlen <= 32:
            raise ConfigError(f"ifconfig: bad IPv4 prefix length {prefixlen}")
        if peer is None:
            kwargs: dict[str, Any] = {"address": str(local_ip), "prefixlen": prefixlen}
            if prefixlen < 31:
                subnet = ipaddress.IPv4Network(f"{local_ip}/{prefixlen}", strict=False)
                kwargs["broadcast"] = str(subnet.broadcast_address)
            plan.addrs.append((kwargs, f"{local_ip}/{prefixlen}"))
        else:
            # Point-to-point (net30/p2p): IFA_LOCAL is ours, IFA_ADDRESS is the far end.
            peer_ip = _addr(peer, 4, "ifconfig peer")
            kwargs = {"address": str(local_ip), "prefixlen": prefixlen, "peer": str(peer_ip)}
            plan.addrs.append((kwargs, f"{local_ip} peer {peer_ip}"))
    if cfg.ipv6 is not None:
        address6, prefixlen6 = cfg.ipv6
        ip6 = _addr(address6, 6, "ifconfig-ipv6")
        if not 0 < prefixlen6 <= 128:
            raise ConfigError(f"ifconfig-ipv6: bad prefix length {prefixlen6}")
        plan.addrs.append(({"address": str(ip6), "prefixlen": prefixlen6}, f"{ip6}/{prefixlen6}"))
    for version, routes, what in ((4, cfg.routes, "route"), (6, cfg.routes6, "route-ipv6")):
        for network_text, gateway, metric in routes:
            net = _network(network_text, version, what)
            gw = str(_addr(gateway, version, f"{what} gateway")) if gateway is not None else None
            if metric is not None and not 0 <= metric <= 0xFFFFFFFF:
                raise ConfigError(f"{what} {network_text}: bad metric {metric}")
            label = f"{net}" + (f" via {gw}" if gw else "")
            on_tun = version == 6 or gw is None or not cfg.kernel_picks_device or _on_tun(cfg.ipv4, gw)
            plan.routes.append(PlannedRoute(
                str(net.network_address), net.prefixlen, gw, metric, label, on_tun,
                required=not cfg.skip_refused_routes,
            ))
    via = str(_addr(cfg.redirect_via, 4, "redirect gateway")) if cfg.redirect_via else None
    if cfg.redirect_metric6 is not None and not 0 <= cfg.redirect_metric6 <= 0xFFFFFFFF:
        raise ConfigError(f"redirect-gateway ipv6: bad metric {cfg.redirect_metric6}")
    for enabled, nets, family, gw, metric6 in (
        (cfg.redirect_gateway, REDIRECT_DEF1_V4, socket.AF_INET, via, None),
        (cfg.redirect_gateway6, cfg.redirect_nets6, socket.AF_INET6, None, cfg.redirect_metric6),
    ):
        if not enabled:
            continue
        for text in nets:
            net = _network(text, 4 if family == socket.AF_INET else 6, "redirect-gateway")
            label = f"{net}" + (f" via {gw}" if gw else "") + " (redirect)"
            plan.routes.append(
                PlannedRoute(str(net.network_address), net.prefixlen, gw, metric6, label, required=True)
            )
        for server in cfg.server_addresses if cfg.pin_servers else ():
            try:
                server_ip = ipaddress.ip_address(server)
            except ValueError:
                raise ConfigError(f"VPN server address {server!r} is not an IP address") from None
            server_family = socket.AF_INET if server_ip.version == 4 else socket.AF_INET6
            if server_family == family:
                plan.host_routes.append((str(server_ip), server_ip.max_prefixlen))
    for text in cfg.bypass:
        try:
            bypass = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ConfigError(f"bypass route {text!r} is not a network") from None
        item = (str(bypass.network_address), bypass.prefixlen)
        if item not in plan.host_routes:
            plan.host_routes.append(item)
    return plan


def validate(cfg: TunConfig) -> None:
    """ConfigError if `cfg` cannot be applied (what `NetConfigurator.apply` checks first)."""
    make_plan(cfg)
