"""The server's kernel TUN: opened and configured once, shared by every client.

The interface gets the server's own tunnel address (topology subnet: address/prefix of the
server network; net30: a point-to-point address toward the first /30's peer plus a route
for the whole server network), the IPv6 address with server-ipv6, the config's `route`
lines, and is brought up — through `NetConfigurator`, whose undo is registered as a
cleanup together with closing the device, so every exit path removes all of it.

Two tasks move packets: a reader hands each burst from the kernel to `Hub.from_tun`
(which batches per client), a writer drains the bounded channel the clients' packets
reach through `Hub.to_tun`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

import trio

from trivpn.errors import ConfigError
from trivpn.server.config_model import ServerConfig
from trivpn.server.hub import Hub
from trivpn.tun.base import TunDevice
from trivpn.tun.linux import LinuxTun, TunPermissionError, open_tun
from trivpn.tun.netconfig import NetConfigurator, TunConfig

__all__ = ["TunFactory", "open_server_tun", "run_tun_reader", "run_tun_writer", "server_tun_config"]

log = logging.getLogger("trivpn.server")

#: Opens the server's device and registers its removal (tests pass a userspace TUN).
TunFactory = Callable[[ServerConfig, Callable[[Callable[[], Any]], None]], TunDevice]


def server_tun_config(cfg: ServerConfig) -> TunConfig:
    """What to put on the server's TUN (see the module docstring)."""
    tc = TunConfig(mtu=cfg.tun_mtu or 1500)
    if cfg.ifconfig is not None:
        local, second = cfg.ifconfig
        if cfg.topology == "subnet":
            prefix = IPv4Network(f"0.0.0.0/{second}").prefixlen
            tc.ipv4 = (str(local), prefix, None)
        else:
            tc.ipv4 = (str(local), 32, str(second))
    if cfg.ifconfig_ipv6 is not None:
        tc.ipv6 = (str(cfg.ifconfig_ipv6.ip), cfg.ifconfig_ipv6.network.prefixlen)
    tc.routes = [(str(net), None, None) for net in cfg.routes]
    tc.routes6 = [(str(net), None, None) for net in cfg.routes_ipv6]
    return tc


def open_server_tun(cfg: ServerConfig, add_cleanup: Callable[[Callable[[], Any]], None]) -> LinuxTun:
    """Create and configure the TUN; its removal is registered before anything is changed.
    `dev tun` picks the first free tunN, as OpenVPN does; `dev NAME` uses that name."""
    try:
        fd, name = open_tun("tun%d" if cfg.dev == "tun" else cfg.dev)
    except TunPermissionError as exc:
        raise ConfigError(str(exc)) from None
    tun = LinuxTun(fd, name)
    add_cleanup(tun.close)
    net = NetConfigurator(tun.name)
    add_cleanup(net.undo)
    net.apply(server_tun_config(cfg))
    log.info("%s up: %s", tun.name, ", ".join(net.applied))
    return tun


async def run_tun_reader(tun: TunDevice, hub: Hub) -> None:
    while True:
        batch = await tun.read_batch()
        if not batch:
            return  # the device was closed
        hub.from_tun(batch)


async def run_tun_writer(tun: TunDevice, packets: trio.MemoryReceiveChannel[list[bytes]]) -> None:
    async for batch in packets:
        await tun.write_batch(batch)
