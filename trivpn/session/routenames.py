"""Host names in the profile's `route` lines, resolved once per run.

Why: OpenVPN 2.6 accepts `route intranet.example 255.255.255.255` (and a name as the
gateway) in a profile and resolves it, IPv4 only, when it adds the routes; a name that
does not resolve is logged and its route skipped, the tunnel goes on. trivpn does the
same, once, when the first tunnel comes up (before its routes and DNS are applied, so
the system's own resolver answers), and keeps the answers for the run: on a reconnect
the system's DNS may be the dead tunnel's, and a changed answer would move routes. The
whole lookup is bounded by `ROUTE_NAMES_TIMEOUT`; `route_names` and the use of the
answers (`netsettings.net_plan`) are pure.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

import trio

from trivpn.profile.model import Route
from trivpn.profile.netopts import is_route_name
from trivpn.session.transport import PathHooks

__all__ = ["ROUTE_NAMES_TIMEOUT", "resolve_route_names", "route_names"]

log = logging.getLogger("trivpn")

#: Seconds all the route names together may take to resolve.
ROUTE_NAMES_TIMEOUT = 10.0


def route_names(routes: Sequence[Route]) -> list[str]:
    """The host names among the routes' networks and gateways, each once, in order."""
    names: list[str] = []
    for r in routes:
        for value in (r.network, r.gateway):
            if value is not None and is_route_name(value) and value not in names:
                names.append(value)
    return names


async def resolve_route_names(
    names: Sequence[str], hooks: PathHooks | None = None, budget: float = ROUTE_NAMES_TIMEOUT
) -> dict[str, str | None]:
    """The first IPv4 address of each name, None for one that did not resolve in time."""
    out: dict[str, str | None] = dict.fromkeys(names)
    if not names:
        return out
    if hooks is not None:
        hooks.resolving(True)  # the kill switch lets the queries out meanwhile
    try:
        with trio.move_on_after(budget) as scope:
            for name in names:
                try:
                    infos = await trio.socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_DGRAM)
                except (OSError, UnicodeError) as exc:
                    log.warning("route: cannot resolve %r: %s", name, getattr(exc, "strerror", None) or exc)
                    continue
                addrs = [info[4][0] for info in infos if isinstance(info[4][0], str)]
                out[name] = addrs[0] if addrs else None
    finally:
        if hooks is not None:
            hooks.resolving(False)
    if scope.cancelled_caught:
        log.warning("route: resolving %s took over %g s; given up", ", ".join(names), budget)
    return out
