"""Interface configuration (MTU, addresses, routes) over rtnetlink, undone exactly on exit.

Theory of operation: `apply` validates the whole TunConfig first (ConfigError, nothing
touched), then makes netlink changes one at a time and records each change that *we* made as
an undo step. Something that already existed (EEXIST) is left alone and not recorded, so
`undo` never removes state that belonged to someone else. `undo` replays the record in reverse
and never raises: an object that is already gone (the TUN fd was closed first, which deletes
the interface with its addresses and routes) counts as removed. What closing the TUN does
not remove are the routes outside it: the host route to the VPN server through the
*previous* default path (redirect-gateway), `net_gateway` bypasses, a `route` via a LAN
router, and `reapply`'s unreachable stand-ins; that is why `undo` must always run.

What to configure and its validation are `tunplan` (pure); this module applies a plan.
`reapply` switches a configured TUN to new settings (a reconnect's) without a moment in
which the tunnel's routes are missing (see its docstring).

The netlink requests go through `trivpn.tun.rtnl`, a small synchronous client (it replaced
pyroute2, whose import alone cost ~0.15 s and ~17 MB). It blocks briefly, at setup and
teardown only (call from a worker thread if the event loop must stay responsive).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.tun.rtnl import IFF_UP, RTN_UNICAST, RTN_UNREACHABLE, NetlinkError, Route, RtnlSocket
from trivpn.tun.tunplan import SERVER_ROUTE6_METRIC, Plan, TunConfig, make_plan

log = logging.getLogger(__name__)

# Errors meaning "the thing to remove is not there any more" (its interface is gone, ...).
_ALREADY_GONE = frozenset({errno.ENODEV, errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL})

#: metric of the unreachable stand-ins `reapply` puts under the tunnel's routes (the highest:
#: every real route wins over them)
GUARD_METRIC = 0xFFFFFFFF


@dataclass(slots=True)
class _Step:
    """One change we made: the netlink call that reverts it, and a label for the logs."""

    kind: str  # "link" (undo: set_link), "addr" (del_addr) or "route" (del_route)
    undo_kwargs: dict[str, Any]
    label: str


class NetConfigurator:
    """Applies a TunConfig to an interface over rtnetlink and remembers exactly what it added."""

    def __init__(self, ifname: str, netlink: Callable[[], RtnlSocket] | None = None) -> None:
        """`netlink` opens the rtnetlink connection: trivpn's own client, or pyroute2 in the
        privileged helper (trivpn/tun/pyroute2nl.py); both take the same calls. None: this
        module's `RtnlSocket`, looked up at each use."""
        self.ifname = ifname
        self._netlink = netlink
        self._steps: list[_Step] = []
        #: the TUN's interface index, once `apply` looked it up
        self._index: int | None = None
        #: during `reapply`: the previous settings' routes outside the TUN, kept if wanted again
        self._kept: list[_Step] = []
        #: `reapply` is applying (lookups may find its unreachable stand-ins)
        self._reapplying = False

    def _open(self) -> RtnlSocket:
        return self._netlink() if self._netlink is not None else RtnlSocket()

    @property
    def applied(self) -> list[str]:
        """Human-readable list of the changes currently recorded (oldest first)."""
        return [step.label for step in self._steps]

    def apply(self, cfg: TunConfig) -> None:
        """Set MTU, bring up, add addresses and routes; on failure undo and raise ConfigError."""
        plan = make_plan(cfg)
        try:
            with self._open() as nl:
                self._apply(nl, cfg, plan)
        except NetlinkError as exc:
            self.undo()
            raise ConfigError(f"configuring {self.ifname} failed: {_describe(exc)}") from None
        except RemoteProtocolError as exc:  # a garbled kernel reply
            self.undo()
            raise ConfigError(f"configuring {self.ifname} failed: {exc}") from None
        except ConfigError:
            self.undo()
            raise
        except OSError as exc:
            self.undo()
            raise ConfigError(f"configuring {self.ifname} failed: {exc}") from None

    def reapply(self, cfg: TunConfig) -> None:
        """Switch from the applied settings to `cfg` (a reconnect brought different ones)
        without a moment in which the tunnel's routes are missing.

        Undo-then-apply would leave a gap in which redirect-gateway's (or any pushed) traffic
        takes the default route, outside the tunnel. So every destination routed into the
        TUN first gets an unreachable route of the highest metric: between the old routes
        going and the new ones coming, packets fail instead of leaking. The old routes
        outside the TUN (bypass pins, the LAN gateway) stay if `cfg` wants them again: their
        lookup would now find the stand-ins. If `cfg` cannot be applied the stand-ins stay
        (fail closed) and go with `undo` at exit."""
        plan = make_plan(cfg)  # a ConfigError here leaves everything as it is
        if not self._steps or self._index is None:
            self.apply(cfg)
            return
        index = self._index
        outside = [s for s in self._steps if s.kind == "route" and s.undo_kwargs.get("oif") != index]
        into_tun = list(dict.fromkeys(
            (s.undo_kwargs["dst"], s.undo_kwargs["dst_len"])
            for s in self._steps
            if s.kind == "route" and s.undo_kwargs.get("oif") == index
        ))
        guards = self._guard(into_tun)
        self._steps = [s for s in self._steps if s not in outside]
        self.undo()
        self._kept = outside
        self._reapplying = True
        try:
            with self._open() as nl:
                self._apply(nl, cfg, plan)
        except Exception as exc:
            self.undo()
            self._steps = [*self._kept, *guards]  # fail closed until the next apply or exit
            self._kept = []
            if isinstance(exc, ConfigError):
                raise
            if isinstance(exc, NetlinkError):
                raise ConfigError(f"configuring {self.ifname} failed: {_describe(exc)}") from None
            if isinstance(exc, (RemoteProtocolError, OSError)):
                raise ConfigError(f"configuring {self.ifname} failed: {exc}") from None
            raise
        finally:
            self._reapplying = False
        stale, self._kept = self._kept, []
        self._undo_steps([*stale, *guards])

    def _guard(self, destinations: list[tuple[str, int]]) -> list[_Step]:
        """Unreachable routes of the highest metric for `destinations` (those we added)."""
        steps: list[_Step] = []
        if not destinations:
            return steps
        try:
            with self._open() as nl:
                for dst, dst_len in destinations:
                    kwargs: dict[str, Any] = {"dst": dst, "dst_len": dst_len, "priority": GUARD_METRIC}
                    label = f"route {dst}/{dst_len} unreachable (while reconfiguring)"
                    if self._add(nl, "route", {**kwargs, "kind": RTN_UNREACHABLE}, label):
                        steps.append(_Step("route", kwargs, label))
        except (NetlinkError, RemoteProtocolError, ConfigError, OSError) as exc:
            self._undo_steps(steps)
            raise ConfigError(f"reconfiguring {self.ifname} failed: {exc}") from None
        return steps

    def _record(self, nl: RtnlSocket, kwargs: dict[str, Any], label: str) -> None:
        """Add a route (and record it), or take over the same route outside the TUN that the
        previous settings made (`reapply` kept those)."""
        for step in self._kept:
            if step.undo_kwargs == kwargs:
                self._kept.remove(step)
                self._steps.append(step)
                return
        if self._add(nl, "route", kwargs, label):
            self._steps.append(_Step("route", kwargs, label))

    def _apply(self, nl: RtnlSocket, cfg: TunConfig, plan: Plan) -> None:
        link = nl.get_link(self.ifname)
        if link is None:
            raise ConfigError(f"network interface {self.ifname!r} does not exist")
        index = self._index = link.index
        was_up = bool(link.flags & IFF_UP)
        nl.set_link(index, mtu=cfg.mtu, up=True)
        restore: dict[str, Any] = {"index": index, "mtu": link.mtu}
        if not was_up:
            restore["up"] = False
        self._steps.append(_Step("link", restore, f"{self.ifname} mtu {cfg.mtu} up"))

        for kwargs, label in plan.addrs:
            full = {"index": index, **kwargs}
            if self._add(nl, "addr", full, f"address {label}"):
                undo = {k: v for k, v in full.items() if k != "broadcast"}
                self._steps.append(_Step("addr", undo, f"address {label}"))

        # The server host routes must be looked up before the redirect routes exist,
        # otherwise the lookup would already answer "through the tunnel".
        for network, prefixlen in plan.host_routes:
            self._add_server_route(nl, index, network, prefixlen)
        if cfg.block_local:
            self._block_local(nl, index, cfg)

        for r in plan.routes:
            route: dict[str, Any] = {"dst": r.dst, "dst_len": r.prefixlen}
            if r.on_tun:
                route["oif"] = index
            if r.gateway is not None:
                route["gateway"] = r.gateway
            if r.metric is not None:
                route["priority"] = r.metric
            try:
                self._record(nl, route, f"route {r.label}")
            except _AddError as exc:
                if not r.required:
                    log.warning("%s; the tunnel goes on without it (as OpenVPN does)", exc)
                elif exc.code == errno.EACCES and ":" in r.dst and not _ipv6_elsewhere(nl):
                    log.warning("%s: IPv6 is off on this host, so no IPv6 can leave anyway", exc)
                else:
                    raise

    def _add_server_route(self, nl: RtnlSocket, tun_index: int, server: str, prefixlen: int) -> None:
        """Pin the VPN server (or a bypass network) to the path it uses now, so the
        tunnel's routes cannot loop."""
        try:
            current = nl.get_route(server)
        except NetlinkError as exc:
            if not (self._reapplying and exc.code == errno.EHOSTUNREACH):
                log.warning("no existing route to VPN server %s (%s); not pinning it", server, exc)
                return
            current = Route(RTN_UNREACHABLE, None, None)
        if current is not None and current.type == RTN_UNREACHABLE and self._reapplying:
            current = self._default_path(nl, server)
        if current is None:
            return
        oif, gateway = current.oif, current.gateway
        if oif is None or oif == tun_index or current.type != RTN_UNICAST:
            return  # local address, already through the tunnel, or unreachable: nothing to pin
        kwargs: dict[str, Any] = {"dst": server, "dst_len": prefixlen, "oif": oif}
        if gateway is not None:
            kwargs["gateway"] = gateway
        version = ipaddress.ip_address(server).version
        host = prefixlen == (32 if version == 4 else 128)
        if host and version == 6:
            kwargs["priority"] = SERVER_ROUTE6_METRIC
        what = f"{server} (VPN server)" if host else f"{server}/{prefixlen} (bypass)"
        label = f"route {what}" + (f" via {gateway}" if gateway else "")
        self._record(nl, kwargs, label)

    def _default_path(self, nl: RtnlSocket, dst: str) -> Route | None:
        """During `reapply` a lookup finds the unreachable stand-ins: a host route the new
        settings add (a new `net_gateway` route) takes the IPv4 default route instead, the
        path the lookup would have found. (IPv6: not pinned, with a warning.)"""
        if ipaddress.ip_address(dst).version == 4:
            try:
                default = nl.default_route4()
            except (NetlinkError, RemoteProtocolError):
                default = None
            if default is not None:
                return default
        log.warning("no path outside the tunnel known for %s while reconfiguring; not pinning it", dst)
        return None

    def _block_local(self, nl: RtnlSocket, tun_index: int, cfg: TunConfig) -> None:
        """OpenVPN's block-local: the default route's local networks, split in halves so they
        win over the connected routes, go into the tunnel; the LAN gateway keeps a host
        route. Skipped (with a warning) when that cannot be worked out, and when the VPN
        server itself is on that network."""
        try:
            default = nl.default_route4()
            addrs = [] if default is None or default.oif is None else nl.addresses4(default.oif)
        except (NetlinkError, RemoteProtocolError) as exc:
            log.warning("block-local: cannot read the default route (%s); not blocking", exc)
            return
        if default is None or default.gateway is None or default.oif is None:
            log.warning("block-local: no IPv4 default gateway; not blocking the local network")
            return
        gateway = ipaddress.IPv4Address(default.gateway)
        nets: list[ipaddress.IPv4Network] = []
        for address, prefixlen in addrs:
            net = ipaddress.IPv4Network(f"{address}/{prefixlen}", strict=False)
            if prefixlen < 32 and net not in nets:
                nets.append(net)
        lan = next((n for n in nets if gateway in n), None)
        if lan is None:
            log.warning("block-local: the gateway %s is on no local network; not blocking", gateway)
            return
        servers = [ipaddress.ip_address(s) for s in cfg.server_addresses]
        if any(s.version == 4 and s in lan for s in servers):
            log.info("block-local: the VPN server is on the local network; not blocking it")
            return
        pin = {"dst": str(gateway), "dst_len": 32, "oif": default.oif, "gateway": str(gateway)}
        self._record(nl, pin, f"route {gateway} (LAN gateway)")
        via = cfg.redirect_via
        for net in nets:
            for half in net.subnets(prefixlen_diff=1):
                route: dict[str, Any] = {"dst": str(half.network_address), "dst_len": half.prefixlen, "oif": tun_index}
                if via is not None:
                    route["gateway"] = via
                label = f"route {half} (block-local)"
                if self._add(nl, "route", route, label):
                    self._steps.append(_Step("route", route, label))

    @staticmethod
    def _add(nl: RtnlSocket, kind: str, kwargs: dict[str, Any], label: str) -> bool:
        """Add one object; False (and not ours to remove) if it already existed."""
        try:
            getattr(nl, f"add_{kind}")(**kwargs)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                log.warning("%s already exists; leaving it alone", label)
                return False
            raise _AddError(f"cannot add {label}: {_describe(exc)}", exc.code) from None
        log.debug("added %s", label)
        return True

    def undo(self) -> None:
        """Remove everything `apply` added, newest first. Idempotent; never raises."""
        steps, self._steps = self._steps, []
        self._undo_steps(steps)

    def _undo_steps(self, steps: list[_Step]) -> None:
        """Revert `steps`, newest first; never raises."""
        if not steps:
            return
        try:
            nl = self._open()
        except Exception as exc:  # never raise from cleanup
            log.error("cannot open netlink to undo %s: %s", self.ifname, exc)
            return
        try:
            for step in reversed(steps):
                try:
                    if step.kind == "link":
                        nl.set_link(**step.undo_kwargs)
                    else:
                        getattr(nl, f"del_{step.kind}")(**step.undo_kwargs)
                except NetlinkError as exc:
                    if exc.code in _ALREADY_GONE:
                        log.debug("%s was already gone", step.label)
                    else:
                        log.warning("could not undo %s: %s", step.label, _describe(exc))
                except Exception as exc:
                    log.warning("could not undo %s: %s", step.label, exc)
                else:
                    log.debug("removed %s", step.label)
        finally:
            try:
                nl.close()
            except Exception as exc:
                log.debug("closing netlink socket failed: %s", exc)


class _AddError(ConfigError):
    """The kernel refused an addition; `code` is its errno."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


#: looked up (never contacted) to learn whether IPv6 can leave at all
_PROBE6 = "2001:db8::1"


def _ipv6_elsewhere(nl: RtnlSocket) -> bool:
    """Could IPv6 leave by another interface? The kernel refuses IPv6 routes into a TUN on
    which IPv6 is disabled (EACCES); with no IPv6 route elsewhere either (IPv6 switched off
    on the host), redirect-gateway ipv6 / block-ipv6 have nothing to catch and are skipped,
    instead of ending the run; with one, the refusal stands (fail closed)."""
    try:
        return nl.get_route(_PROBE6) is not None
    except (NetlinkError, RemoteProtocolError):
        return False


def _describe(exc: NetlinkError) -> str:
    return f"{exc.strerror} (errno {exc.code})"
