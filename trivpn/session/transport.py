"""Opening the transport of one session attempt: proxy, resolve, happy eyeballs, bind.

Why apart from the client: which socket a candidate remote leads to (through an HTTP or
SOCKS proxy, to which of its addresses, bound where) is a question of the profile and the
attempt number only; the session loop just needs a connected `Transport` within the
connect window, or a `TransportError` saying why not.
"""

from __future__ import annotations

import logging

import trio

from trivpn.networkio import Endpoint, Transport, TransportError, open_transport, resolve
from trivpn.networkio.connect import connect_first
from trivpn.networkio.proxy import open_profile_proxy_transport, proxy_of
from trivpn.networkio.transport import bind_address
from trivpn.session.reconnect import Candidate

__all__ = ["open_candidate", "open_within"]

log = logging.getLogger("trivpn")


async def open_candidate(cand: Candidate, attempt: int, connect_timeout: float, family: int | None = None) -> Transport:
    """Resolve the remote and open one transport to it (no retry: the caller loops).

    `family` (4 or 6, from -4 / -6 on the command line) overrides the profile's protocol.
    """
    remote = cand.remote
    proto = remote.proto
    if family is not None:
        proto = proto.rstrip("46") + str(family)

    def report(msg: str) -> None:
        log.warning("%s", msg)

    if proxy_of(cand.profile) is not None:
        # the proxy resolves the server's name: it may only exist on the proxy's side
        return await open_profile_proxy_transport(
            cand.profile,
            remote.host,
            remote.port,
            proto,
            connect_timeout=connect_timeout,
            report=report,
        )
    log.info("resolving %s", remote.host)
    endpoints = await resolve(remote.host, remote.port, proto)

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
        return await connect_first(endpoints, connect_timeout=connect_timeout, report=report, bind=bind)
    # UDP: one address per attempt, rotating through all of them
    ep = endpoints[attempt % len(endpoints)]
    log.info("connecting to %s", ep.describe())
    return await open_transport(ep, report=report, bind_to=bind(ep))


async def open_within(cand: Candidate, attempt: int, deadline: float, family: int | None = None) -> Transport:
    """`open_candidate` bounded by the connection's connect window, which ends at `deadline`."""
    window = cand.connection.connect_window
    with trio.move_on_at(deadline) as scope:
        return await open_candidate(cand, attempt, window, family)
    assert scope.cancelled_caught
    raise TransportError(f"no connection to {cand.remote.host} within {window:g} s")
