"""Opening the transport of one session attempt: proxy, resolve, happy eyeballs, bind.

Why apart from the client: which socket a candidate remote leads to (through an HTTP or
SOCKS proxy, to which of its addresses, bound where) is a question of the profile and the
attempt number only; the session loop just needs a connected `Transport` within the
connect window, or a `TransportError` saying why not.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Protocol

import trio

from trivpn.networkio import Endpoint, Transport, TransportError, open_transport, resolve
from trivpn.networkio.connect import connect_first
from trivpn.networkio.transport import ResolveError, bind_address
from trivpn.session.reconnect import Candidate

__all__ = ["PathHooks", "open_candidate", "open_within"]

log = logging.getLogger("trivpn")


class PathHooks(Protocol):
    """What must happen on the host before packets can reach a server (the kill switch opens
    a hole for it, redirect-gateway pins a route to it); the client implements it."""

    def resolving(self, active: bool) -> None:
        """A name is being resolved (True) / resolution is over (False)."""

    def reaching(self, endpoints: Sequence[Endpoint]) -> None:
        """Packets are about to go to these endpoints (and no longer to earlier ones)."""


class _NoHooks:
    def resolving(self, active: bool) -> None:
        pass

    def reaching(self, endpoints: Sequence[Endpoint]) -> None:
        pass


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


#: the last addresses each (host, port, proto) resolved to, for when resolving fails later
_LAST_GOOD: dict[tuple[str, int, str], list[Endpoint]] = {}
#: bound on `_LAST_GOOD` (a profile has a few remotes; the oldest entry goes first)
MAX_REMEMBERED = 64


async def _resolve(host: str, port: int, proto: str, hooks: PathHooks) -> list[Endpoint]:
    """The remote's addresses; if the name no longer resolves, the ones it had last time.

    Why: while connected, the system's DNS is the tunnel's (pushed DNS, and with
    redirect-gateway nothing else). When the tunnel drops, a query for the VPN server's own
    name goes to that DNS server through the dead tunnel and times out, every attempt: the
    client could never reconnect. The last good answer of this process is used instead
    (TLS still checks the server), with a warning.
    """
    if _is_literal(host):
        return await resolve(host, port, proto)  # no DNS query: nothing to open for it
    key = (host, port, proto)
    hooks.resolving(True)
    try:
        endpoints = await resolve(host, port, proto)
    except ResolveError as exc:
        last = _LAST_GOOD.get(key)
        if last is None:
            raise
        log.warning("%s; using the addresses it had before (%s)", exc, ", ".join(ep.address for ep in last))
        return list(last)
    finally:
        hooks.resolving(False)
    _LAST_GOOD.pop(key, None)
    _LAST_GOOD[key] = list(endpoints)
    while len(_LAST_GOOD) > MAX_REMEMBERED:
        del _LAST_GOOD[next(iter(_LAST_GOOD))]
    return endpoints


async def open_candidate(
    cand: Candidate,
    attempt: int,
    connect_timeout: float,
    family: int | None = None,
    hooks: PathHooks | None = None,
) -> Transport:
    """Resolve the remote and open one transport to it (no retry: the caller loops).

    `family` (4 or 6, from -4 / -6 on the command line) overrides the profile's protocol.
    `hooks` hear of every address before the first packet is sent to it.
    """
    remote = cand.remote
    proto = remote.proto
    if family is not None:
        proto = proto.rstrip("46") + str(family)
    paths = hooks or _NoHooks()

    def report(msg: str) -> None:
        log.warning("%s", msg)

    spec = cand.profile.http_proxy or cand.profile.socks_proxy  # proxy.proxy_of's choice
    if spec is not None:
        # the proxy code is imported only for a profile that names a proxy (start-up time)
        from trivpn.networkio.proxy import open_profile_proxy_transport

        # the proxy resolves the server's name: it may only exist on the proxy's side; we
        # resolve the proxy's name, tell the hooks where packets will go, and connect to
        # exactly those addresses (one lookup: a second one could answer differently, or
        # fail through the dead tunnel's DNS during a reconnect)
        proxy_endpoints = await _resolve(spec.host, spec.port, proto, paths)
        paths.reaching(proxy_endpoints)
        return await open_profile_proxy_transport(
            cand.profile,
            remote.host,
            remote.port,
            proto,
            connect_timeout=connect_timeout,
            report=report,
            proxy_endpoints=proxy_endpoints,
        )
    log.info("resolving %s", remote.host)
    endpoints = await _resolve(remote.host, remote.port, proto, paths)

    profile = cand.profile

    def bind(ep: Endpoint) -> tuple[str, int] | None:
        # bind only when asked (local/lport/bind) and never with nobind; unlike OpenVPN
        # we do not grab port 1194 by default, so several clients can run side by side
        if profile.nobind or not profile.bind:
            return None
        return bind_address(ep, profile.local, profile.lport)

    if endpoints[0].proto == "tcp":
        for ep in endpoints:
            log.info("connecting to %s", ep.describe())
        paths.reaching(endpoints)  # happy eyeballs may try any of them
        return await connect_first(endpoints, connect_timeout=connect_timeout, report=report, bind=bind)
    # UDP: one address per attempt, rotating through all of them
    ep = endpoints[attempt % len(endpoints)]
    log.info("connecting to %s", ep.describe())
    paths.reaching([ep])
    return await open_transport(ep, report=report, bind_to=bind(ep))


async def open_within(
    cand: Candidate, attempt: int, deadline: float, family: int | None = None, hooks: PathHooks | None = None
) -> Transport:
    """`open_candidate` bounded by the connection's connect window, which ends at `deadline`;
    the hooks are told of the one endpoint in use once the transport is open."""
    window = cand.connection.connect_window
    with trio.move_on_at(deadline) as scope:
        transport = await open_candidate(cand, attempt, window, family, hooks)
        if hooks is not None:
            try:
                hooks.reaching([transport.endpoint])
            except BaseException:
                transport.close()
                raise
        return transport
    assert scope.cancelled_caught
    raise TransportError(f"no connection to {cand.remote.host} within {window:g} s")
