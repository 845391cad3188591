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
import socket
from collections.abc import Callable
from dataclasses import field
from typing import Any

from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.tun.rtnl import IFF_UP, RTN_UNICAST, RTN_UNREACHABLE, NetlinkError, Route, RtnlSocket

log = logging.getLogger(__name__)

TUN_MTU_MIN = 68  # IPv4 minimum link MTU (RFC 791)
TUN_MTU_MAX = 65535
IPV6_MIN_MTU = 1280  # RFC 8200: an interface carrying IPv6 needs at least this
# Errors meaning "the thing to remove is not there any more" (its interface is gone, ...).
_ALREADY_GONE = frozenset({errno.ENODEV, errno.ESRCH, errno.ENOENT, errno.EADDRNOTAVAIL})

#: OpenVPN gives the IPv6 host route to its server metric 1 (IPv4's has none); so do we.
SERVER_ROUTE6_METRIC = 1

#: metric of the unreachable stand-ins `reapply` puts under the tunnel's routes (the highest:
#: every real route wins over them)
GUARD_METRIC = 0xFFFFFFFF

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


@dataclass(slots=True)
class _Step:
    """One change we made: the netlink call that reverts it, and a label for the logs."""

    kind: str  # "link" (undo: set_link), "addr" (del_addr) or "route" (del_route)
    undo_kwargs: dict[str, Any]
    label: str


@dataclass(frozen=True, slots=True)
class _Route:
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
class _Plan:
    """A validated TunConfig in the exact form the netlink calls need."""

    addrs: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # add_addr kwargs
    routes: list[_Route] = field(default_factory=list)
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


def _plan(cfg: TunConfig) -> _Plan:
    """Validate `cfg` completely before touching the system."""
    if not TUN_MTU_MIN <= cfg.mtu <= TUN_MTU_MAX:
        raise ConfigError(f"tun-mtu {cfg.mtu} is outside {TUN_MTU_MIN}..{TUN_MTU_MAX}")
    if cfg.ipv6 is not None and cfg.mtu < IPV6_MIN_MTU:
        raise ConfigError(f"tun-mtu {cfg.mtu} is below {IPV6_MIN_MTU}, too small for IPv6")
    plan = _Plan()
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
            plan.routes.append(_Route(
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
                _Route(str(net.network_address), net.prefixlen, gw, metric6, label, required=True)
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
    _plan(cfg)


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
        plan = _plan(cfg)
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
        plan = _plan(cfg)  # a ConfigError here leaves everything as it is
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

    def _apply(self, nl: RtnlSocket, cfg: TunConfig, plan: _Plan) -> None:
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
