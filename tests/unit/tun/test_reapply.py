"""A reconnect with different pushed settings: no moment in which the tunnel's routes are gone.

A fake kernel routing table answers lookups by longest prefix, then lowest metric, and after
every change the test asks where packets to the Internet would go: into the TUN, or nowhere
(an unreachable stand-in), but never out of the physical interface.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
from typing import Any

from trivpn.session.netapply import TunApplier
from trivpn.tun.netconfig import GUARD_METRIC
from trivpn.tun.rtnl import RTN_UNICAST, RTN_UNREACHABLE, Link, NetlinkError, Route
from trivpn.tun.tunplan import TunConfig

TUN, ETH = 9, 2
DEFAULTS = [
    {"dst": "0.0.0.0", "dst_len": 0, "oif": ETH, "gateway": "192.168.1.1"},
    {"dst": "::", "dst_len": 0, "oif": ETH, "gateway": "fe80::1"},
]
#: must never be reached through ETH while a redirect-gateway tunnel is configured
INTERNET = ("1.1.1.1", "200.1.1.1", "2606:4700::1111")
BYPASS = "198.51.100.5"  # a net_gateway route: must always go through ETH


class RoutingTable:
    """Just enough of the kernel: routes, lookups, link down flushing the TUN's routes."""

    def __init__(self) -> None:
        self.routes: list[dict[str, Any]] = [dict(r) for r in DEFAULTS]
        self.up = False
        self.leaks: list[str] = []
        #: check for leaks after every change (from the first tunnel on)
        self.watch = False

    def __call__(self) -> RoutingTable:
        return self

    def __enter__(self) -> RoutingTable:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    @staticmethod
    def _key(r: dict[str, Any]) -> tuple[str, int, int]:
        return r["dst"], r["dst_len"], r.get("priority") or 0

    def lookup(self, dst: str) -> dict[str, Any] | None:
        addr = ipaddress.ip_address(dst)
        found = [
            r for r in self.routes
            if addr.version == ipaddress.ip_address(r["dst"]).version
            and addr in ipaddress.ip_network(f"{r['dst']}/{r['dst_len']}")
        ]
        found.sort(key=lambda r: (-r["dst_len"], r.get("priority") or 0))
        return found[0] if found else None

    def _check(self, what: str) -> None:
        for dst in INTERNET if self.watch else ():
            r = self.lookup(dst)
            if r is not None and r.get("oif") == ETH:
                self.leaks.append(f"{dst} via ETH after {what}")

    def get_link(self, ifname: str) -> Link:
        return Link(TUN, 1 if self.up else 0, 1500)

    def set_link(self, index: int, *, mtu: int | None = None, up: bool | None = None) -> None:
        if up is not None:
            self.up = up
            if not up:  # the kernel drops a down link's routes
                self.routes = [r for r in self.routes if r.get("oif") != TUN]
        self._check(f"set_link up={up}")

    def add_addr(self, index: int, address: str, prefixlen: int, **kw: Any) -> None:
        pass

    def del_addr(self, index: int, address: str, prefixlen: int, **kw: Any) -> None:
        self._check(f"del_addr {address}")

    def default_route4(self) -> Route | None:
        return Route(RTN_UNICAST, ETH, "192.168.1.1")

    def get_route(self, dst: str) -> Route | None:
        r = self.lookup(dst)
        if r is None:
            return None
        return Route(r.get("kind", RTN_UNICAST), r.get("oif"), r.get("gateway"))

    def add_route(self, **kw: Any) -> None:
        if any(self._key(r) == self._key(kw) for r in self.routes):
            raise NetlinkError(errno.EEXIST, "File exists")
        self.routes.append(kw)
        self._check(f"add {kw['dst']}/{kw['dst_len']}")

    def del_route(self, **kw: Any) -> None:
        for r in self.routes:
            if all(r.get(k) == v for k, v in kw.items()):
                self.routes.remove(r)
                self._check(f"del {kw['dst']}/{kw['dst_len']}")
                return
        raise NetlinkError(errno.ESRCH, "No such process")


class NoDns:
    def recover(self) -> None:
        pass

    def undo(self) -> None:
        pass

    def apply(self, dns: object) -> None:
        pass


def config(local: str, peer: str, route: str) -> TunConfig:
    return TunConfig(
        ipv4=(local, 32, peer), ipv6=("fd00:8::1000", 64), routes=[(route, peer, None)],
        redirect_gateway=True, redirect_gateway6=True, redirect_via=peer,
        server_addresses=["203.0.113.9"], bypass=["198.51.100.0/24"],
    )


def test_changed_settings_are_switched_without_a_moment_outside_the_tunnel() -> None:
    kernel = RoutingTable()
    cleanups: list[Any] = []
    tun = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]  # duck-typed
    tun.netlink = kernel  # type: ignore[assignment]  # duck-typed netlink
    tun.apply(config("10.8.0.6", "10.8.0.5", "10.9.0.0/16"))
    kernel.watch = True
    # the reconnect's server pushes another address (so another gateway) and other routes
    tun.apply(config("10.8.0.10", "10.8.0.9", "10.11.0.0/16"))
    assert kernel.leaks == []
    via = {(r["dst"], r["dst_len"]): r.get("gateway") for r in kernel.routes if r.get("oif") == TUN}
    assert via[("0.0.0.0", 1)] == via[("128.0.0.0", 1)] == "10.8.0.9"
    assert ("10.11.0.0", 16) in via and ("10.9.0.0", 16) not in via  # the old session's route went
    assert not [r for r in kernel.routes if r.get("priority") == GUARD_METRIC]  # stand-ins gone
    assert kernel.lookup(BYPASS) == {"dst": "198.51.100.0", "dst_len": 24, "oif": ETH, "gateway": "192.168.1.1"}
    kernel.watch = False  # exit: the routes go with the tunnel
    for fn in reversed(cleanups):
        fn()
    assert kernel.routes == DEFAULTS


def test_a_failed_reapply_stays_closed_until_exit() -> None:
    kernel = RoutingTable()
    cleanups: list[Any] = []
    tun = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]
    tun.netlink = kernel  # type: ignore[assignment]
    tun.apply(config("10.8.0.6", "10.8.0.5", "10.9.0.0/16"))
    kernel.watch = True

    def refuse(index: int, address: str, prefixlen: int, **kw: Any) -> None:
        raise NetlinkError(errno.EINVAL, "Invalid argument")

    kernel.add_addr = refuse  # type: ignore[method-assign]
    try:
        tun.apply(config("10.8.0.10", "10.8.0.9", "10.11.0.0/16"))
    except Exception as exc:
        assert "cannot add address 10.8.0.10" in str(exc)
    else:
        raise AssertionError("the refused address did not fail the apply")
    assert kernel.leaks == []
    assert all(kernel.lookup(d)["kind"] == RTN_UNREACHABLE for d in INTERNET)  # type: ignore[index]
    # the next session brings the first settings back: they are applied again (the host
    # holds only the stand-ins now), and the stand-ins go
    del kernel.add_addr
    tun.apply(config("10.8.0.6", "10.8.0.5", "10.9.0.0/16"))
    assert kernel.leaks == []
    assert kernel.lookup("1.1.1.1") == {"dst": "0.0.0.0", "dst_len": 1, "oif": TUN, "gateway": "10.8.0.5"}
    assert not [r for r in kernel.routes if r.get("priority") == GUARD_METRIC]
    kernel.watch = False  # exit: the routes go with the tunnel
    for fn in reversed(cleanups):
        fn()
    assert kernel.routes == DEFAULTS


def test_a_route_via_a_lan_router_is_left_to_the_kernel_and_survives_a_reapply() -> None:
    """`route NET MASK 192.168.1.1`: OpenVPN adds it without a device, so the kernel sends it
    out of the LAN; with the TUN forced as its device the kernel refused it and the run ended."""
    kernel = RoutingTable()
    cleanups: list[Any] = []
    tun = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]
    tun.netlink = kernel  # type: ignore[assignment]
    lan = {"dst": "192.168.50.0", "dst_len": 24, "gateway": "192.168.1.1"}

    def cfg(local: str) -> TunConfig:
        return TunConfig(ipv4=(local, 24, None), routes=[("192.168.50.0/24", "192.168.1.1", None),
                                                         ("10.9.0.0/16", "10.8.0.1", None)],
                         kernel_picks_device=True)

    tun.apply(dataclasses.replace(cfg("10.8.0.2"), kernel_picks_device=False))
    assert {**lan, "oif": TUN} in kernel.routes  # the server and the manager: into the TUN
    for fn in reversed(cleanups):
        fn()
    cleanups.clear()
    tun = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]
    tun.netlink = kernel  # type: ignore[assignment]
    tun.apply(cfg("10.8.0.2"))
    assert lan in kernel.routes
    assert {"dst": "10.9.0.0", "dst_len": 16, "oif": TUN, "gateway": "10.8.0.1"} in kernel.routes
    tun.apply(cfg("10.8.0.3"))  # a reconnect with another address: the LAN route stays, once
    assert kernel.routes.count(lan) == 1
    for fn in reversed(cleanups):
        fn()
    assert kernel.routes == DEFAULTS


def test_a_route_the_kernel_refuses_is_skipped_but_a_redirect_route_is_not(caplog: Any) -> None:
    """OpenVPN logs a failed `route` and goes on; ending the run would take the tunnel's other
    routes away (fail open). A refused redirect half still fails the apply."""
    kernel = RoutingTable()
    real_add = kernel.add_route

    def add_route(**kw: Any) -> None:
        if kw.get("gateway") == "10.77.0.1" or (kw["dst"] == "128.0.0.0" and refuse_redirect):
            raise NetlinkError(errno.ENETUNREACH, "Network is unreachable")
        real_add(**kw)

    kernel.add_route = add_route  # type: ignore[method-assign]
    refuse_redirect = False
    cleanups: list[Any] = []
    tun = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]
    tun.netlink = kernel  # type: ignore[assignment]
    cfg = TunConfig(ipv4=("10.8.0.2", 24, None), routes=[("10.50.0.0/16", "10.77.0.1", None)],
                    redirect_gateway=True, redirect_via="10.8.0.1", skip_refused_routes=True)
    tun.apply(cfg)
    assert "cannot add route 10.50.0.0/16 via 10.77.0.1" in caplog.text
    assert {"dst": "0.0.0.0", "dst_len": 1, "oif": TUN, "gateway": "10.8.0.1"} in kernel.routes
    for fn in reversed(cleanups):
        fn()
    assert kernel.routes == DEFAULTS
    refuse_redirect = True
    tun2 = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]
    tun2.netlink = kernel  # type: ignore[assignment]
    try:
        tun2.apply(cfg)
    except Exception as exc:
        assert "cannot add route 128.0.0.0/1" in str(exc)
    else:
        raise AssertionError("a refused redirect route did not fail the apply")
    refuse_redirect = False
    tun3 = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]
    tun3.netlink = kernel  # type: ignore[assignment]
    try:  # the server and the manager (no skip_refused_routes): still an error
        tun3.apply(dataclasses.replace(cfg, skip_refused_routes=False))
    except Exception as exc:
        assert "cannot add route 10.50.0.0/16" in str(exc)
    else:
        raise AssertionError("a refused route was skipped without skip_refused_routes")


def test_ipv6_redirect_on_a_host_without_ipv6_is_skipped_but_not_when_ipv6_could_leak(caplog: Any) -> None:
    """IPv6 disabled on the TUN: the kernel refuses its IPv6 routes (EACCES). With IPv6 off on
    the whole host (no IPv6 route anywhere) block-ipv6 / redirect-gateway ipv6 have nothing to
    catch: the tunnel comes up (it ended the run); with an IPv6 route elsewhere the refusal
    still fails the apply."""
    cfg = TunConfig(ipv4=("10.8.0.2", 24, None), redirect_gateway=True, redirect_via="10.8.0.1",
                    redirect_gateway6=True)
    for ipv6_elsewhere in (False, True):
        kernel = RoutingTable()
        if not ipv6_elsewhere:
            kernel.routes = [r for r in kernel.routes if ":" not in r["dst"]]
        real_add = kernel.add_route

        def add_route(real_add: Any = real_add, **kw: Any) -> None:
            if ":" in kw["dst"]:
                raise NetlinkError(errno.EACCES, "Permission denied")
            real_add(**kw)

        kernel.add_route = add_route  # type: ignore[method-assign]
        cleanups: list[Any] = []
        tun = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]
        tun.netlink = kernel  # type: ignore[assignment]
        if ipv6_elsewhere:
            try:
                tun.apply(cfg)
            except Exception as exc:
                assert "Permission denied" in str(exc)
            else:
                raise AssertionError("IPv6 could leak, yet the refused redirect was skipped")
        else:
            tun.apply(cfg)
            assert "cannot add route ::/1 (redirect)" in caplog.text
            assert {"dst": "0.0.0.0", "dst_len": 1, "oif": TUN, "gateway": "10.8.0.1"} in kernel.routes
        for fn in reversed(cleanups):
            fn()


def test_a_bypass_the_new_settings_add_takes_the_default_path() -> None:
    """During a re-apply a lookup finds the unreachable stand-ins; a `net_gateway` route the
    new session adds still goes through the default route, as a fresh apply would do."""
    kernel = RoutingTable()
    cleanups: list[Any] = []
    tun = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]
    tun.netlink = kernel  # type: ignore[assignment]
    first = config("10.8.0.6", "10.8.0.5", "10.9.0.0/16")
    tun.apply(first)
    second = config("10.8.0.10", "10.8.0.9", "10.11.0.0/16")
    second.bypass = [*second.bypass, "100.64.0.0/10"]
    tun.apply(second)
    assert kernel.lookup("100.64.1.1") == {"dst": "100.64.0.0", "dst_len": 10, "oif": ETH, "gateway": "192.168.1.1"}
    for fn in reversed(cleanups):
        fn()
    assert kernel.routes == DEFAULTS
