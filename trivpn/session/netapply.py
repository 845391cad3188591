"""Applying the pushed network settings to a kernel TUN, once per run and again on change.

Why a class of its own: the TUN outlives sessions (persist-tun), so its configuration is a
run-long state — applied when the first tunnel comes up, left alone when a reconnect brings
the same settings, redone when the server pushed different ones, undone by the workers
manager's cleanup on every exit path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace

from trivpn.session.serverroute import ServerRoutes
from trivpn.tun.netconfig import NetConfigurator, TunConfig

__all__ = ["TunApplier"]

log = logging.getLogger("trivpn")


class TunApplier:
    """Applies `TunConfig`s to `ifname` (nothing at all when `ifname` is None).

    `add_cleanup` registers the undo with whoever owns the run (the workers manager)."""

    def __init__(self, ifname: str | None, add_cleanup: Callable[[Callable[[], None]], object]) -> None:
        self.ifname = ifname
        self._add_cleanup = add_cleanup
        self.applied: TunConfig | None = None
        self._configurator: NetConfigurator | None = None
        #: the redirect-gateway bypass routes: they follow the server in use (serverroute.py)
        self.server_routes: ServerRoutes | None = None

    def reaching(self, addresses: Sequence[str]) -> None:
        """Packets are about to go to these server addresses: with redirect-gateway applied,
        pin them outside the tunnel first (and unpin the previous server)."""
        cfg = self.applied
        if self.server_routes is not None and cfg is not None and (cfg.redirect_gateway or cfg.redirect_gateway6):
            self.server_routes.pin(addresses)

    def apply(self, cfg: TunConfig) -> None:
        """Configure the TUN the first time; on a reconnect only if the settings changed."""
        if not self.ifname:
            return
        # the bypass routes are not part of the TUN's configuration: a new server address
        # must not undo and redo the redirect routes (a moment without them would leak)
        if self.server_routes is None:
            self.server_routes = ServerRoutes(self.ifname)
            self._add_cleanup(self.server_routes.clear)
        redirect = cfg.redirect_gateway or cfg.redirect_gateway6
        self.server_routes.pin(cfg.server_addresses if redirect else [])
        cfg = replace(cfg, server_addresses=[])
        if self._configurator is not None:
            if self.applied == cfg:
                return
            log.info("the server pushed different settings; reconfiguring %s", self.ifname)
            self._configurator.undo()
        else:
            self._configurator = NetConfigurator(self.ifname)
            self._add_cleanup(self._configurator.undo)
        self._configurator.apply(cfg)
        self.applied = cfg
