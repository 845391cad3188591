"""Applying a tunnel's network plan to the host, once per run and again on change.

Why a class of its own: the TUN outlives sessions (persist-tun), so its configuration is a
run-long state — applied when the first tunnel comes up, left alone when a reconnect brings
the same settings, redone when the server pushed different ones, undone by the workers
manager's cleanup on every exit path. The plan (`trivpn.session.netsettings.NetPlan`) has
three parts: addresses and routes (rtnetlink, `trivpn.tun.netconfig`), DNS
(`trivpn.session.dns`: systemd-resolved or resolv.conf, whose leftovers from a crashed run
are restored when the applier starts) and block-ipv6 (the TUN answers IPv6 itself).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol, cast

from trivpn.session.dns import DnsConfigurator
from trivpn.session.netsettings import NetPlan
from trivpn.session.serverroute import ServerRoutes
from trivpn.tun.linux import LinuxTun
from trivpn.tun.netconfig import NetConfigurator
from trivpn.tun.rtnl import RtnlSocket
from trivpn.tun.tunplan import TunConfig

__all__ = ["TunApplier"]

log = logging.getLogger("trivpn")


class _Helper(Protocol):
    """The privileged side after a drop (trivpn.session.privdrop.HelperLink)."""

    def apply(self, plan: NetPlan) -> None: ...
    def reaching(self, addresses: Sequence[str]) -> None: ...
    def undo_net(self) -> None: ...
    def undo_dns(self) -> None: ...


class TunApplier:
    """Applies `NetPlan`s to `ifname` (nothing at all when `ifname` is None).

    `add_cleanup` registers the undo with whoever owns the run (the workers manager);
    `device` is the TUN whose reads block-ipv6 filters; `dns` is the DNS configurator
    (tests pass their own; None builds the system's)."""

    def __init__(
        self,
        ifname: str | None,
        add_cleanup: Callable[[Callable[[], None]], object],
        *,
        device: object = None,
        dns: DnsConfigurator | None = None,
    ) -> None:
        self.ifname = ifname
        self._add_cleanup = add_cleanup
        self.applied: TunConfig | None = None
        #: an apply has run (the host may have been changed): a later failure is a reconnect's
        self.configured = False
        #: the last apply failed: the host no longer holds `applied` (only the unreachable
        #: stand-ins of a re-apply), so the next plan is applied even if it is the same
        self._dirty = False
        self._configurator: NetConfigurator | None = None
        self._device = device if isinstance(device, LinuxTun) else None
        self._dns = dns
        if ifname and self._dns is None:
            self._dns = DnsConfigurator(ifname)
        #: after a privilege drop: the privileged helper that changes the host for us
        self._helper: _Helper | None = None
        if ifname and self._dns is not None:
            self._dns.recover()
            add_cleanup(self.undo_dns)
        #: the redirect-gateway host routes to the server: they follow the server in use
        #: (serverroute.py), apart from the TUN's configuration
        self.server_routes: ServerRoutes | None = None
        #: opens rtnetlink: trivpn's own client here; the privileged helper of a user/group
        #: run switches to pyroute2 (`use_pyroute2`)
        self.netlink: Callable[[], RtnlSocket] | None = None

    def use_pyroute2(self) -> None:
        """Do the rtnetlink work with pyroute2 from now on (the privileged helper, where its
        import cost is paid once, outside the engine; trivpn/tun/pyroute2nl.py)."""
        from trivpn.tun.pyroute2nl import Pyroute2Socket

        self.netlink = cast("Callable[[], RtnlSocket]", Pyroute2Socket)

    def hand_over(self, helper: _Helper) -> None:
        """From now on the host is changed by `helper` (a forked copy of this applier that
        kept root; see trivpn.session.privdrop); this process only filters block-ipv6."""
        self._helper = helper

    def undo_net(self) -> None:
        """Addresses, routes and the server's host routes off (cleanup: never raises)."""
        if self._helper is not None:
            self._helper.undo_net()
            return
        if self._configurator is not None:
            self._configurator.undo()
        if self.server_routes is not None:
            self.server_routes.clear()

    def undo_dns(self) -> None:
        """DNS restored (cleanup: never raises)."""
        if self._helper is not None:
            self._helper.undo_dns()
        elif self._dns is not None:
            self._dns.undo()

    def _redirected(self, addresses: Sequence[str], cfg: TunConfig) -> list[str]:
        """The server addresses whose family `cfg` redirects into the tunnel."""
        return [a for a in addresses if (cfg.redirect_gateway6 if ":" in a else cfg.redirect_gateway)]

    def reaching(self, addresses: Sequence[str]) -> None:
        """Packets are about to go to these server addresses: with redirect-gateway applied,
        pin them outside the tunnel first (and unpin the previous server)."""
        if self._helper is not None:
            if self.applied is not None:
                self._helper.reaching(list(addresses))
            return
        cfg = self.applied
        if self.server_routes is not None and cfg is not None:
            self.server_routes.pin(self._redirected(addresses, cfg))

    def apply(self, plan: NetPlan | TunConfig) -> None:
        """Configure the TUN the first time; on a reconnect only what changed."""
        if not self.ifname:
            return
        if isinstance(plan, TunConfig):
            plan = NetPlan(plan)
        cfg = plan.tun
        if self._helper is not None:
            if not self.configured:  # the first plan: its undo belongs to this run's cleanups
                self._add_cleanup(self.undo_net)
            self.configured = True
            self._helper.apply(plan)  # the helper's own applier keeps track of failures
            self.applied = cfg
            self._answer_ipv6(plan)
            return
        self.configured = True
        try:
            self._apply_here(plan)
        except BaseException:
            self._dirty = True
            raise
        self._dirty = False

    def _apply_here(self, plan: NetPlan) -> None:
        """`apply` in this process (no privileged helper)."""
        assert self.ifname
        cfg = plan.tun
        # the server's host route is not part of the TUN's configuration: a new server
        # address must not undo and redo the redirect routes (a moment without them leaks)
        if self.server_routes is None:
            self.server_routes = ServerRoutes(self.ifname, self.netlink)
            self._add_cleanup(self.server_routes.clear)
        self.server_routes.pin(self._redirected(cfg.server_addresses, cfg))
        cfg = replace(cfg, pin_servers=False)
        if self._configurator is None:
            self._configurator = NetConfigurator(self.ifname, self.netlink)
            self._add_cleanup(self.undo_net)
            self._configurator.apply(cfg)
        elif self._dirty or not _same_but_server(self.applied, cfg):
            log.info("the server pushed different settings; reconfiguring %s", self.ifname)
            self._configurator.reapply(cfg)  # no moment without the tunnel's routes
        self.applied = cfg
        if self._dns is not None:
            self._dns.apply(plan.dns)
        self._answer_ipv6(plan)

    def _answer_ipv6(self, plan: NetPlan) -> None:
        if self._device is not None:
            source = plan.block_ipv6_source
            if source is None:
                self._device.ipv6_answer = None
                return
            from trivpn.tun.ip import icmp6_no_route  # block-ipv6 only (start-up time of the rest)

            self._device.ipv6_answer = functools.partial(icmp6_no_route, source=source)


def _same_but_server(old: TunConfig | None, new: TunConfig) -> bool:
    """Equal apart from the server addresses (which only block-local's check reads)."""
    return old is not None and replace(old, server_addresses=[]) == replace(new, server_addresses=[])
