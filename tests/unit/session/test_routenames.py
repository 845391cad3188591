"""The profile's route host names: found in the routes, resolved once, IPv4, bounded."""

from __future__ import annotations

import socket

import pytest
import trio

from trivpn.profile.model import Route
from trivpn.session import routenames
from trivpn.session.routenames import resolve_route_names, route_names


class Hooks:
    def __init__(self) -> None:
        self.dns: list[bool] = []

    def resolving(self, active: bool) -> None:
        self.dns.append(active)

    def reaching(self, endpoints: object) -> None:
        pass


def test_route_names_are_the_host_names_only() -> None:
    routes = [
        Route("intranet.example", "255.255.255.255", None, None),
        Route("10.3.0.0", "255.255.0.0", "gw.example", None),
        Route("vpn_gateway", "255.255.255.255", "net_gateway", None),
        Route("intranet.example", "255.255.255.255", "10.8.0.1", 5),
    ]
    assert route_names(routes) == ["intranet.example", "gw.example"]
    assert route_names([Route("10.1.0.0", "255.255.0.0", None, None)]) == []


async def test_names_resolve_to_their_first_ipv4_address_within_the_budget(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    asked: list[tuple[object, int]] = []

    async def fake_getaddrinfo(host: str, port: object, family: int = 0, *rest: object) -> list[object]:
        asked.append((host, family))
        if host == "slow.example":
            await trio.sleep_forever()
        if host == "gone.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("10.77.0.5", 0)),
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("10.77.0.6", 0))]

    monkeypatch.setattr(routenames.trio.socket, "getaddrinfo", fake_getaddrinfo)
    hooks = Hooks()
    got = await resolve_route_names(["intranet.example", "gone.example", "slow.example", "late.example"], hooks, 0.2)
    assert got == {"intranet.example": "10.77.0.5", "gone.example": None, "slow.example": None, "late.example": None}
    assert all(family == socket.AF_INET for _h, family in asked)  # `route` is IPv4
    assert hooks.dns == [True, False]  # the kill switch lets DNS out only meanwhile
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "cannot resolve 'gone.example'" in text and "took over 0.2 s" in text
    assert await resolve_route_names([], hooks) == {} and hooks.dns == [True, False]
