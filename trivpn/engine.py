"""The engine: one client session stack, its TUN device and the workers manager around it.

The command line (`trivpn connect`), the library API (`trivpn.connect`, and through it
`trivpn ping`) and the manager-driven tunnel process all run the same thing: a `Client` on
a device under a `WorkersManager` whose cleanups close the device and undo the network
settings on every exit path. This module is the one place that builds and runs that trio;
the callers differ only in the device they hand over and in who applies the network
settings.

Usage::

    config = SessionConfig.from_profile(profile, username=..., password=...)
    engine = Engine(config, kernel_tun(), configure_tun=True, handle_signals=True, kill_switch=False)
    await engine.run()  # or: info = await nursery.start(engine.run)
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from trivpn.client import Client
from trivpn.errors import ConfigError
from trivpn.session import killswitch
from trivpn.session.config import SessionConfig
from trivpn.session.killswitch import KillSwitch, NftRunner
from trivpn.session.netsettings import TunnelInfo
from trivpn.session.runevents import OnRunEvent
from trivpn.tun.base import TunDevice
from trivpn.tun.linux import LinuxTun, TunPermissionError, open_tun
from trivpn.tunname import DEFAULT_TUN_NAME
from trivpn.workers.manager import WorkersManager

if TYPE_CHECKING:
    from trivpn.observe.hooks import ClientObserver
    from trivpn.tun.userspace import UserspaceTun

__all__ = ["Engine", "inherited_tun", "kernel_tun", "userspace_tun"]

log = logging.getLogger("trivpn")


def kernel_tun(name: str = DEFAULT_TUN_NAME) -> LinuxTun:
    """A kernel TUN interface called `name` (`%d`: the first free number); needs root or
    CAP_NET_ADMIN (ConfigError otherwise).

    A specific name that is already a TUN nobody has open (made with `ip tuntap add`,
    `openvpn --mktun`) is taken over, as OpenVPN does; the kernel's answer for one that
    exists as another kind of interface was "Invalid argument", so that is said plainly.
    """
    existed = "%" not in name and _interface_exists(name)
    try:
        fd, actual = open_tun(name)
    except TunPermissionError as exc:
        raise ConfigError(f"{exc}") from None
    except ConfigError:
        if existed and _interface_exists(name):
            raise ConfigError(
                f"interface {name!r} already exists and is not a TUN device trivpn can use "
                "(another program's, or another kind): choose another 'dev' name, or 'dev tun'"
            ) from None
        raise
    if existed:
        log.info("using the existing TUN device %s", actual)
    return LinuxTun(fd, actual)


def _interface_exists(name: str) -> bool:
    """Whether this network namespace has an interface `name` (no sysfs needed)."""
    import socket

    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def inherited_tun(fd: int, name: str = "") -> LinuxTun:
    """The TUN a privileged manager created and let this process inherit as `fd`."""
    if fd < 3:
        raise ConfigError(f"tunnel_file_descriptor {fd} is not a TUN fd (need an inherited fd >= 3)")
    try:
        os.fstat(fd)
    except OSError:
        raise ConfigError(f"tunnel_file_descriptor {fd} is not open in the tunnel process") from None
    return LinuxTun(fd, name or f"fd{fd}")


def userspace_tun() -> UserspaceTun:
    """An in-process TUN: the application sends and receives the IP packets (no root)."""
    from trivpn.tun.userspace import UserspaceTun  # not for `trivpn connect` (start-up time)

    return UserspaceTun()


class Engine:
    """A client session stack on `device`, run under its own `WorkersManager`.

    `configure_tun`: apply the pushed addresses and routes to the (kernel) device ourselves;
    otherwise `on_tunnel_up` may do it (the privileged manager). `close_device`: close the
    device when the run ends (a userspace device stays readable for the application).
    """

    def __init__(
        self,
        config: SessionConfig,
        device: TunDevice,
        *,
        configure_tun: bool = False,
        on_tunnel_up: Callable[[TunnelInfo], Awaitable[None]] | None = None,
        handle_signals: bool = False,
        close_device: bool = True,
        rng: random.Random | None = None,
        on_event: OnRunEvent | None = None,
        observer: ClientObserver | None = None,
        kill_switch: bool = False,
        run_nft: NftRunner = killswitch.run_nft,
    ) -> None:
        self.config = config
        self.device = device
        self.close_device = close_device
        self.configure_tun = configure_tun
        self.manager = WorkersManager(handle_signals=handle_signals)
        self._run_nft = run_nft
        self.kill_switch: KillSwitch | None = None
        if kill_switch:
            if not isinstance(device, LinuxTun):
                raise ConfigError("the kill switch needs a kernel TUN (trivpn connect)")
            self.kill_switch = KillSwitch(device.name, run_nft)
        self.client = Client(
            config,
            device=device,
            ifname=device.name if isinstance(device, LinuxTun) else None,
            configure_tun=configure_tun,
            on_tunnel_up=on_tunnel_up,
            rng=rng,
            on_event=on_event,
            observer=observer,
            kill_switch=self.kill_switch,
        )

    @property
    def stop_reason(self) -> str | None:
        """Why a graceful stop was requested (a signal name, the application, ...)."""
        return self.manager.stop_reason

    def request_stop(self, reason: str = "stop requested") -> None:
        """Begin a graceful stop: EXIT to the server, then cancel (idempotent)."""
        self.manager.request_stop(reason)

    def restart(self, reason: str) -> None:
        """End the current session and reconnect (SIGUSR1/SIGHUP, management `signal`)."""
        self.client.restart(reason)

    async def restart_after_goodbye(self, reason: str) -> None:
        """SIGUSR1/SIGHUP as OpenVPN's client takes them: tell the server (bounded), then end
        the session and reconnect; the TUN, its routes and DNS stay (persist-tun)."""
        with trio.move_on_after(1.0):
            await self.client.exit_notify(restart=reason)
        self.restart(reason)

    async def run(self, *, task_status: trio.TaskStatus[TunnelInfo] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped or failed; `task_status` gets the first `TunnelInfo`.

        Failures come out as the manager's exception group (`primary_error` names the cause).
        """
        kill = self.kill_switch
        if kill is not None:  # removed last: after the routes and the device are gone
            self.manager.add_cleanup(kill.stop)
        if self.close_device:
            self.manager.add_cleanup(self.device.close)

        async def setup(m: WorkersManager) -> None:
            assert m.nursery is not None
            if kill is not None:
                kill.start()  # before the first packet; replaces a table a crashed run left
            elif self.configure_tun:
                killswitch.remove_stale_table(self._run_nft)
            info = await m.nursery.start(self.client.run, m)
            task_status.started(info)

        await self.manager.run(setup)
