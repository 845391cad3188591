"""The rtnetlink calls `NetConfigurator` and `ServerRoutes` make, over pyroute2.

Why two implementations: the engine process configures its TUN with `trivpn.tun.rtnl`, a
small hand-written client, because importing pyroute2 costs 155 ms and 17.7 MB that every
`trivpn connect` would pay before its first packet (docs/performance.md). The privileged
helper of `user`/`group` runs (trivpn/session/privdrop.py) is a separate, long-lived root
process whose start-up nobody waits for; there the well-kept library does the work, as the
design card asks. Both sides take the same calls (`RtnlSocket`'s methods) and raise the same
`NetlinkError` with the kernel's errno, so the configurator's logic is shared; the mapping
of each call to pyroute2 is the one `tests/unit/tun/test_rtnl.py` checks byte for byte.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError as Pyroute2Error

from trivpn.tun.rtnl import RT_TABLE_MAIN, RTN_UNICAST, Link, NetlinkError, Route

__all__ = ["Pyroute2Socket"]

_T = TypeVar("_T")


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


class Pyroute2Socket:
    """`RtnlSocket`'s interface on a pyroute2 `IPRoute` (a context manager, closed once)."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Pyroute2Socket:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @staticmethod
    def _call(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        try:
            return fn(*args, **kwargs)
        except Pyroute2Error as exc:
            code = int(exc.code or 0)
            raise NetlinkError(code, os.strerror(code) if code else str(exc)) from None

    def get_link(self, ifname: str) -> Link | None:
        found = self._call(self._ipr.link_lookup, ifname=ifname)
        if not found:
            return None
        (msg,) = self._call(self._ipr.get_links, found[0])
        return Link(int(msg["index"]), int(msg["flags"]), msg.get_attr("IFLA_MTU"))

    def set_link(self, index: int, *, mtu: int | None = None, up: bool | None = None) -> None:
        kwargs: dict[str, Any] = {"index": index}
        if mtu is not None:
            kwargs["mtu"] = mtu
        if up is not None:
            kwargs["state"] = "up" if up else "down"
        self._call(self._ipr.link, "set", **kwargs)

    @staticmethod
    def _addr_args(index: int, address: str, prefixlen: int, peer: str | None) -> dict[str, Any]:
        if peer is not None:  # a point-to-point address: IFA_LOCAL ours, IFA_ADDRESS the peer
            return {"index": index, "local": address, "address": peer, "prefixlen": prefixlen}
        return {"index": index, "address": address, "prefixlen": prefixlen}

    def add_addr(
        self, index: int, address: str, prefixlen: int, *, peer: str | None = None, broadcast: str | None = None
    ) -> None:
        kwargs = self._addr_args(index, address, prefixlen, peer)
        if broadcast is not None:
            kwargs["broadcast"] = broadcast
        self._call(self._ipr.addr, "add", **kwargs)

    def del_addr(self, index: int, address: str, prefixlen: int, *, peer: str | None = None) -> None:
        self._call(self._ipr.addr, "del", **self._addr_args(index, address, prefixlen, peer))

    @staticmethod
    def _route_args(dst: str, dst_len: int, oif: int | None, gateway: str | None, priority: int | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"dst": dst, "dst_len": dst_len, "family": _family(dst)}
        if oif is not None:
            kwargs["oif"] = oif
        if gateway is not None:
            kwargs["gateway"] = gateway
        if priority is not None:
            kwargs["priority"] = priority
        return kwargs

    def add_route(
        self,
        dst: str,
        dst_len: int,
        *,
        oif: int | None = None,
        gateway: str | None = None,
        priority: int | None = None,
        kind: int = RTN_UNICAST,
    ) -> None:
        kwargs = self._route_args(dst, dst_len, oif, gateway, priority)
        if kind != RTN_UNICAST:
            kwargs["type"] = kind
        self._call(self._ipr.route, "add", **kwargs)

    def del_route(
        self, dst: str, dst_len: int, *, oif: int | None = None, gateway: str | None = None, priority: int | None = None
    ) -> None:
        self._call(self._ipr.route, "del", **self._route_args(dst, dst_len, oif, gateway, priority))

    @staticmethod
    def _route(msg: Any) -> Route:
        table = msg.get_attr("RTA_TABLE")
        return Route(
            type=int(msg["type"]),
            oif=msg.get_attr("RTA_OIF"),
            gateway=msg.get_attr("RTA_GATEWAY"),
            dst_len=int(msg["dst_len"]),
            table=int(table if table is not None else msg["table"]),
            priority=int(msg.get_attr("RTA_PRIORITY") or 0),
        )

    def get_route(self, dst: str) -> Route | None:
        for msg in self._call(self._ipr.route, "get", dst=dst, family=_family(dst)):
            return self._route(msg)
        return None

    def default_route4(self) -> Route | None:
        best: Route | None = None
        for msg in self._call(self._ipr.route, "dump", family=socket.AF_INET):
            route = self._route(msg)
            if route.dst_len or route.table != RT_TABLE_MAIN or route.type != RTN_UNICAST:
                continue
            if best is None or route.priority < best.priority:
                best = route
        return best

    def addresses4(self, index: int) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for msg in self._call(self._ipr.get_addr, family=socket.AF_INET, index=index):
            local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if local is not None and int(msg["index"]) == index:
                out.append((str(local), int(msg["prefixlen"])))
        return out
