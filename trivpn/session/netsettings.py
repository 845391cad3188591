"""What a session's tunnel looks like to the host: the pushed options as a TUN configuration.

`tun_config_from` translates a PUSH_REPLY into what the TUN layer applies (addresses,
routes, redirect-gateway); `describe_tunnel` is the one "tunnel up" line users and tests
read.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

from trivpn.errors import FatalError
from trivpn.profile.push import PushedSettings
from trivpn.tun.netconfig import TunConfig

__all__ = ["TunnelInfo", "describe_tunnel", "tun_config_from"]

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


def tun_config_from(settings: PushedSettings, server_address: str) -> TunConfig:
    """Translate pushed options into what the TUN layer applies."""
    cfg = TunConfig(mtu=settings.tun_mtu or 1500)
    if settings.ifconfig_local:
        other = settings.ifconfig_remote_or_mask
        if settings.topology == "subnet":
            if not other:
                raise FatalError("pushed 'ifconfig' lacks a netmask for topology subnet")
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{other}").prefixlen
            cfg.ipv4 = (settings.ifconfig_local, prefix, None)
        else:
            cfg.ipv4 = (settings.ifconfig_local, 32, other)
    if settings.ifconfig_ipv6_local:
        iface = ipaddress.IPv6Interface(settings.ifconfig_ipv6_local)
        cfg.ipv6 = (str(iface.ip), iface.network.prefixlen)
    for r in settings.routes:
        network = r.network
        if network == "vpn_gateway" and settings.route_gateway:
            network = settings.route_gateway
        if r.gateway == "net_gateway" or network in ("net_gateway", "remote_host", "vpn_gateway"):
            log.warning("route %s %s %s is not supported; skipped", r.network, r.netmask, r.gateway or "")
            continue
        net = ipaddress.IPv4Network(f"{network}/{r.netmask}", strict=False)
        cfg.routes.append((str(net), None, r.metric))
    for r6 in settings.routes_ipv6:
        net6 = ipaddress.IPv6Network(r6.network, strict=False)
        cfg.routes6.append((str(net6), None, r6.metric))
    if settings.redirect_gateway is not None:
        if "def1" not in settings.redirect_gateway:
            log.warning("redirect-gateway without def1 is applied as def1 (never replaces the default route)")
        if "!ipv4" not in settings.redirect_gateway:
            cfg.redirect_gateway = True
    cfg.redirect_gateway6 = bool(settings.redirect_gateway_ipv6)
    if cfg.redirect_gateway or cfg.redirect_gateway6:
        cfg.server_addresses = [server_address]
    return cfg


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
            routes.append("::/1+8000::/1")
        if routes:
            parts.append("routes " + ", ".join(routes))
    where = f" on {info.ifname}" if info.ifname else ""
    return (
        f"tunnel up{where}: {'; '.join(parts) or 'no addresses'}; "
        f"cipher {info.cipher} ({info.key_derivation})"
    )
