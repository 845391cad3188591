"""The bypass route: with redirect-gateway, the VPN server itself stays reachable outside the tunnel.

Theory of operation
-------------------
redirect-gateway sends everything into the TUN (0.0.0.0/1 + 128.0.0.0/1, ::/1 + 8000::/1),
so the server's own address needs a host route through the path it had before, or the
tunnel's packets would loop into the tunnel. The route must follow the server *in use*: a
reconnect to another remote, or to another address of the same name, must first pin the new
address — while the redirect routes stay in place (persist-tun: nothing leaks meanwhile) —
and then drop the old pin.

The catch is the lookup: once the redirect routes exist, the kernel answers "through the
TUN" for any new address. So the first pin (made before the redirect routes are added) also
asks the kernel for the path to an address no one routes specially (a documentation
address), which is the default path, and remembers it per address family; a later lookup
that answers "TUN" uses that remembered path instead, while a lookup that answers another
interface (a more specific route, the server on the local subnet) is taken as it is.

`ServerRoutes.pin(addresses)` makes exactly those addresses pinned (adding first, removing
after); `clear()` removes every pin and is the run's cleanup. Neither raises for a route
that cannot be added: the warning says why, and the session then fails and retries.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import Any

from trivpn.tun.rtnl import RTN_UNICAST, NetlinkError, RtnlSocket
from trivpn.tun.tunplan import SERVER_ROUTE6_METRIC

__all__ = ["ServerRoutes"]

log = logging.getLogger("trivpn")

_GONE = frozenset({errno.ESRCH, errno.ENOENT, errno.ENODEV})
#: looked up (never contacted) to learn the default path of each family
_PROBE = {4: "192.0.2.1", 6: "2001:db8::1"}


class ServerRoutes:
    """Host routes to the VPN server(s) in use, outside the TUN `ifname`."""

    def __init__(self, ifname: str, netlink: Callable[[], RtnlSocket] | None = None) -> None:
        self.ifname = ifname
        self._netlink = netlink
        #: address → the add_route/del_route arguments of its pin
        self.pinned: dict[str, dict[str, Any]] = {}
        #: IP version → (oif, gateway): the path outside the tunnel, learnt before redirecting
        self.underlay: dict[int, tuple[int, str | None]] = {}

    def pin(self, addresses: Sequence[str]) -> None:
        """Pin exactly `addresses` (new pins first, then the old ones go)."""
        wanted = list(dict.fromkeys(addresses))
        if wanted == list(self.pinned) or (not wanted and not self.pinned):
            return
        try:
            nl = self._netlink() if self._netlink is not None else RtnlSocket()
        except OSError as exc:
            log.warning("cannot open netlink to pin the VPN server route: %s", exc)
            return
        with nl:
            tun = nl.get_link(self.ifname)
            tun_index = tun.index if tun is not None else None
            for version, probe in _PROBE.items():
                if version not in self.underlay:
                    self._learn(nl, version, probe, tun_index)
            for address in wanted:
                if address not in self.pinned:
                    self._add(nl, address, tun_index)
            for address in [a for a in self.pinned if a not in wanted]:
                self._remove(nl, address)

    def clear(self) -> None:
        """Remove every pin (the run's cleanup: never raises)."""
        try:
            self.pin([])
        except Exception as exc:
            log.warning("could not remove the VPN server route: %s", exc)

    def _learn(self, nl: RtnlSocket, version: int, probe: str, tun_index: int | None) -> None:
        try:
            route = nl.get_route(probe)
        except NetlinkError:
            return  # no default route for this family (yet)
        if route is not None and route.type == RTN_UNICAST and route.oif not in (None, tun_index):
            assert route.oif is not None
            self.underlay[version] = (route.oif, route.gateway)

    def _path(self, nl: RtnlSocket, ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
              tun_index: int | None) -> tuple[int, str | None] | None:
        try:
            current = nl.get_route(str(ip))
        except NetlinkError as exc:
            log.debug("no route to %s: %s", ip, exc)
            current = None
        if current is not None and current.type != RTN_UNICAST:
            return None  # a local address, or unreachable: nothing to pin
        if current is not None and current.oif is not None and current.oif != tun_index:
            if ip.version not in self.underlay and current.gateway is not None:
                self.underlay[ip.version] = (current.oif, current.gateway)  # no probe answer
            return current.oif, current.gateway
        return self.underlay.get(ip.version)  # the kernel says "TUN": use the path it had

    def _add(self, nl: RtnlSocket, address: str, tun_index: int | None) -> None:
        ip = ipaddress.ip_address(address)
        path = self._path(nl, ip, tun_index)
        if path is None:
            log.debug("VPN server %s needs no route of its own", address)
            return
        oif, gateway = path
        kwargs: dict[str, Any] = {"dst": str(ip), "dst_len": 32 if ip.version == 4 else 128, "oif": oif}
        if gateway is not None:
            kwargs["gateway"] = gateway
        if ip.version == 6:
            kwargs["priority"] = SERVER_ROUTE6_METRIC  # as OpenVPN's
        label = f"route {ip} (VPN server)" + (f" via {gateway}" if gateway else "")
        try:
            nl.add_route(**kwargs)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                log.debug("%s already exists; leaving it alone", label)
            else:
                log.warning("cannot add %s: %s", label, exc.strerror)
            return
        log.info("added %s", label)
        self.pinned[address] = kwargs

    def _remove(self, nl: RtnlSocket, address: str) -> None:
        kwargs = self.pinned.pop(address)
        try:
            nl.del_route(**kwargs)
        except NetlinkError as exc:
            if exc.code not in _GONE:
                log.warning("could not remove the route to %s: %s", address, exc.strerror)
            return
        log.info("removed the route to the previous VPN server %s", address)
