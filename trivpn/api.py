"""The library API: `async with trivpn.connect(profile) as tunnel:`.

The tunnel is a userspace one by default: IP packets go in with `send` and come out with
`receive`, no root and no TUN device needed. Leaving the block sends the exit notification
and shuts every layer down; an error inside the engine cancels the block and is raised
from it (as `trivpn.errors.TrivpnError` subclasses wherever the cause is known).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from trivpn.engine import Engine, userspace_tun
from trivpn.profile.profile import Profile, load_profile
from trivpn.profile.push import PushedSettings
from trivpn.session.config import HAND_WINDOW, SessionConfig
from trivpn.session.netsettings import TunnelInfo
from trivpn.tun.userspace import UserspaceTun
from trivpn.workers.manager import WorkersManager, primary_error


@dataclass(slots=True)
class Tunnel:
    """A running tunnel carrying IP packets for the application."""

    info: TunnelInfo
    _device: UserspaceTun
    _manager: WorkersManager

    @property
    def settings(self) -> PushedSettings:
        """The network settings the server pushed (addresses, routes, DNS, MTU...)."""
        return self.info.settings

    async def send(self, ip_packet: bytes) -> None:
        """Send one IPv4/IPv6 packet into the tunnel."""
        await self._device.send(ip_packet)

    async def receive(self) -> bytes:
        """The next IP packet that came out of the tunnel."""
        return await self._device.receive()

    def close(self) -> None:
        """Begin a graceful shutdown (leaving the `async with` block does this too)."""
        self._manager.request_stop("closed by the application")


@asynccontextmanager
async def connect(
    profile: str | os.PathLike[str] | Profile,
    *,
    key_derivation: str = "auto",
    username: str = "",
    password: str = "",
    hand_window: float = HAND_WINDOW,
    reconnect: bool = True,
    connect_timeout: float | None = None,
    family: int | None = None,
    **_unused: Any,
) -> AsyncIterator[Tunnel]:
    """Connect to the profile's server and yield a userspace `Tunnel` once it is up.

    The tunnel reconnects by itself when the session ends (server restart, ping-restart,
    lost TCP connection) unless `reconnect=False`; `connect_timeout` bounds how long the
    first connection may take (None: keep trying, like `trivpn connect`).
    """
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    config = SessionConfig.from_profile(
        profile,
        key_derivation=key_derivation,
        username=username,
        password=password,
        hand_window=hand_window,
        no_reconnect=not reconnect,
        give_up_after=connect_timeout,
        family=family,
    )
    device = userspace_tun()
    engine = Engine(config, device, close_device=False)
    try:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(engine.run)
            try:
                yield Tunnel(info, device, engine.manager)
            finally:
                engine.request_stop("left the connect() block")
    except BaseExceptionGroup as group:
        err = primary_error(group)
        if isinstance(err, Exception):
            raise err from None
        raise
