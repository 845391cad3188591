"""Applying the pushed network settings to a kernel TUN, once per run and again on change.

Why a class of its own: the TUN outlives sessions (persist-tun), so its configuration is a
run-long state — applied when the first tunnel comes up, left alone when a reconnect brings
the same settings, redone when the server pushed different ones, undone by the workers
manager's cleanup on every exit path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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

    def apply(self, cfg: TunConfig) -> None:
        """Configure the TUN the first time; on a reconnect only if the settings changed."""
        if not self.ifname:
            return
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
