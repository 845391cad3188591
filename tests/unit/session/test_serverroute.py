"""The redirect-gateway bypass route follows the server in use (a fake rtnetlink socket)."""

from __future__ import annotations

import errno
from typing import Any

from trivpn.session.netapply import TunApplier
from trivpn.session.serverroute import ServerRoutes
from trivpn.tun.rtnl import RTN_UNICAST, Link, NetlinkError, Route
from trivpn.tun.tunplan import TunConfig

RTN_LOCAL = 2  # rtnetlink route type "local"

TUN, ETH = 9, 2


class FakeNetlink:
    """Answers route lookups from `answers` (default: through the TUN, as with redirect
    routes in place) and records the routes added and removed."""

    def __init__(self) -> None:
        self.answers: dict[str, Route] = {}
        self.routes: list[dict[str, Any]] = []
        self.log: list[str] = []

    def __call__(self) -> FakeNetlink:
        return self

    def __enter__(self) -> FakeNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def get_link(self, ifname: str) -> Link | None:
        return Link(TUN, 1, 1500)

    def get_route(self, dst: str) -> Route | None:
        return self.answers.get(dst, Route(RTN_UNICAST, TUN, None))

    def add_route(self, **kw: Any) -> None:
        if kw in self.routes:
            raise NetlinkError(errno.EEXIST, "File exists")
        self.routes.append(kw)
        self.log.append(f"add {kw['dst']}")

    def del_route(self, **kw: Any) -> None:
        self.routes.remove(kw)
        self.log.append(f"del {kw['dst']}")


def test_the_pin_moves_to_the_new_server_through_the_remembered_path() -> None:
    nl = FakeNetlink()
    routes = ServerRoutes("tun0", nl)  # type: ignore[arg-type]  # duck-typed netlink
    # before the redirect routes: the server is on the local link, the default path goes
    # through a gateway (learnt from the probe lookup)
    nl.answers["203.0.113.9"] = Route(RTN_UNICAST, ETH, None)
    nl.answers["192.0.2.1"] = Route(RTN_UNICAST, ETH, "10.0.0.1")
    routes.pin(["203.0.113.9"])
    assert nl.routes == [{"dst": "203.0.113.9", "dst_len": 32, "oif": ETH}]
    assert routes.underlay == {4: (ETH, "10.0.0.1")}  # IPv6 had no default path
    # later the kernel answers "TUN" for everything: a new server gets the default path, and
    # its pin is in place before the old one goes
    del nl.answers["192.0.2.1"]
    routes.pin(["198.51.100.7"])
    assert nl.log == ["add 203.0.113.9", "add 198.51.100.7", "del 203.0.113.9"]
    assert nl.routes == [{"dst": "198.51.100.7", "dst_len": 32, "oif": ETH, "gateway": "10.0.0.1"}]
    routes.pin(["198.51.100.7"])  # unchanged: no netlink traffic
    assert len(nl.log) == 3
    routes.clear()
    assert nl.routes == [] and routes.pinned == {}


def test_no_pin_for_a_local_server_or_without_a_known_path() -> None:
    nl = FakeNetlink()
    routes = ServerRoutes("tun0", nl)  # type: ignore[arg-type]
    nl.answers["127.0.0.1"] = Route(RTN_LOCAL, 1, None)
    routes.pin(["127.0.0.1", "2001:db8::1"])  # local; IPv6 answered "TUN" with no path known
    assert nl.routes == [] and routes.pinned == {}


def test_applier_pins_only_with_redirect_gateway_and_keeps_routes_across_servers(monkeypatch: Any) -> None:
    """TunApplier: a new server address re-pins but never re-applies (undo would drop the
    redirect routes for a moment and leak)."""
    from trivpn.session import netapply

    nl = FakeNetlink()
    applied: list[TunConfig] = []

    class FakeConfigurator:
        def __init__(self, ifname: str, netlink: Any = None) -> None:
            pass

        def apply(self, cfg: TunConfig) -> None:
            applied.append(cfg)

        def undo(self) -> None:
            applied.append(TunConfig(mtu=0))

    monkeypatch.setattr(netapply, "NetConfigurator", FakeConfigurator)
    monkeypatch.setattr(netapply, "ServerRoutes", lambda ifname, netlink=None: ServerRoutes(ifname, nl))  # type: ignore[arg-type]
    class NoDns:
        def recover(self) -> None:
            pass

        def undo(self) -> None:
            pass

        def apply(self, dns: object) -> None:
            pass

    cleanups: list[Any] = []
    tun = TunApplier("tun0", cleanups.append, dns=NoDns())  # type: ignore[arg-type]  # duck-typed
    tun.reaching(["192.0.2.1"])  # nothing applied yet: no redirect, no pin
    assert nl.routes == []
    nl.answers["192.0.2.1"] = Route(RTN_UNICAST, ETH, "10.0.0.1")  # the server, and the probe
    cfg = TunConfig(ipv4=("10.8.0.2", 24, None), redirect_gateway=True, server_addresses=["192.0.2.1"])
    tun.apply(cfg)
    assert [r["dst"] for r in nl.routes] == ["192.0.2.1"] and not applied[-1].pin_servers
    tun.reaching(["198.51.100.7"])  # the next attempt goes elsewhere
    tun.apply(TunConfig(ipv4=("10.8.0.2", 24, None), redirect_gateway=True, server_addresses=["198.51.100.7"]))
    assert len(applied) == 1  # same settings: not undone and redone
    assert [r["dst"] for r in nl.routes] == ["198.51.100.7"]
    for fn in reversed(cleanups):
        fn()
    assert nl.routes == []
