"""The server's kernel TUN: opened and configured once, shared by every client.

The interface gets the server's own tunnel address (topology subnet: address/prefix of the
server network; net30: a point-to-point address toward the first /30's peer plus a route
for the whole server network), the IPv6 address with server-ipv6, the config's `route`
lines, and is brought up — through `NetConfigurator`, whose undo is registered as a
cleanup together with closing the device, so every exit path removes all of it.

Two tasks move packets: a reader hands each burst from the kernel to `Hub.from_tun`
(which batches per client), a writer drains the bounded queue of `TunSink`, where the
clients' packets arrive through `Hub.to_tun`. The queue is only for back-pressure: while it
is empty and the writer holds nothing, `TunSink.send_nowait` writes a kernel TUN's packets
at once from the caller's task (the UDP receiver), saving a task hop per batch; what the
kernel does not take at once is queued behind, so packets never overtake each other.
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
from trivpn.tun.netconfig import NetConfigurator
from trivpn.tun.tunplan import TunConfig

__all__ = ["TunFactory", "TunSink", "open_server_tun", "run_tun_reader", "server_tun_config"]

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


class TunSink:
    """Where the hub puts packets for the TUN (see the module docstring); `run` is the writer."""

    def __init__(self, size: int) -> None:
        self._s, self._r = trio.open_memory_channel[list[bytes]](size)
        self._direct: LinuxTun | None = None
        self._backlog = False  # the writer task holds or may hold packets not yet written

    def send_nowait(self, batch: list[bytes]) -> None:
        """Write or queue `batch`; raises trio.WouldBlock when the queue is full (the hub
        drops and counts)."""
        tun = self._direct
        if tun is not None and not self._backlog:
            try:
                i = tun.write_nowait(batch)
            except trio.ClosedResourceError:
                return  # the server is going away
            if i >= len(batch):
                return
            batch = batch[i:]
        self._s.send_nowait(batch)
        self._backlog = True

    async def run(self, tun: TunDevice, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task; started once a kernel TUN may be written directly."""
        if isinstance(tun, LinuxTun):
            self._direct = tun
        task_status.started()
        async for batch in self._r:
            await tun.write_batch(batch)
            if not self._r.statistics().current_buffer_used:
                self._backlog = False
