"""How one client gets in, and stays in: addresses, password or auth-token, scripts.

Without scripts or auth-gen-token, the key schedule's push callable (`push`) chooses the
client's addresses when its certificate is known: common name, client-config-dir file,
retirement of an older session of that name, the pool lease (its old address, or the ccd
file's fixed one), the routes. With them, the schedule holds the first key (AuthRequest)
and `admit` does the same in OpenVPN's order around the scripts (admission.py): the
password or token, the addresses, client-connect (its file can move, route or refuse the
client), the routes with learn-address; its AuthVerdict releases or refuses the key. A
renegotiated key is held too when a password check is configured (`reauthenticate`), and
an auth-token is renewed every renewal interval. The client's identity (common name, ccd
entry, lease) is kept on its ClientSession, which the status, the hub and the router read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import trio

from trivpn.messages import AuthRequest, AuthVerdict, PushAuthToken
from trivpn.server.admission import check_credentials, merge_entries
from trivpn.server.authscript import printable_username
from trivpn.server.authtoken import make_token
from trivpn.server.ccd import CcdEntry
from trivpn.server.ccdclient import client_pushes, find_ccd, unrouted_iroutes
from trivpn.server.clienthooks import ClientHooks
from trivpn.server.pool_types import FixedAddressError, PoolExhausted
from trivpn.server.routing import LearnAddress, RouteLimitExceeded
from trivpn.server.scripts import UNDEF, client_env
from trivpn.tlssession.negotiation import NegotiationError, PeerInfo
from trivpn.tlssession.tlsload import remap_name

if TYPE_CHECKING:
    from trivpn.server.clientsession import ClientSession

__all__ = ["Admission"]

log = logging.getLogger("trivpn.server")


class Admission:
    """One client's way in (see the module docstring)."""

    def __init__(self, client: ClientSession) -> None:
        self.client = client
        self.hooks = ClientHooks(client.parts.scripts)
        #: the client reached the end of admission (client-disconnect runs for it)
        self.admitted = False
        #: the username it logged in with (a renegotiation must not change it), control
        #: characters remapped as OpenVPN does (`remap_name`): it goes into the status file
        self.username = ""
        self._named = False

    def push(self, peer: PeerInfo) -> Sequence[str]:
        """The key schedule asks what to push. Without scripts the addresses are chosen
        right here (ccd file, lease, routes); with them `admit` already did it."""
        c = self.client
        if c.lease is None:
            self._take_addresses(peer.common_name, peer.username)
            self._learn_routes()
        assert c.lease is not None
        self.admitted = True
        return client_pushes(c.hub.config.push, c.ccd, c.lease)

    def _take_addresses(self, common_name: str, username: str, dyn: CcdEntry | None = None) -> None:
        """Common name, ccd entry (with a client-connect file's options over it), duplicate
        retirement and the lease (NegotiationError refuses the client)."""
        c = self.client
        cfg = c.hub.config
        if not self._named:
            self._named = True
            c.common_name = common_name
            if cfg.username_as_common_name and username and self._username_checked():
                c.common_name = remap_name(username)  # vetted; as OpenVPN names it
            if cfg.client_config_dir is not None:
                c.ccd = find_ccd(cfg.client_config_dir, c.common_name, cfg.ccd_exclusive)
            if c.hub.retire_common_name(c.common_name, c.key, trio.current_time()):
                log.info("%r replaces the older session of %s", c, c.common_name)
        if dyn is not None:
            c.ccd = merge_entries(c.ccd, dyn)
            if c.ccd is not None and c.ccd.disable:
                raise NegotiationError("client is disabled (client-connect)")
            if c.lease is not None and (dyn.ifconfig_push or dyn.ifconfig_ipv6_push):
                c.hub.pool.release(c.lease, trio.current_time())
                c.lease = None
        if c.ccd is not None and (unrouted := unrouted_iroutes(c.ccd, cfg)):
            log.warning("%r: no 'route' sends iroute %s into the TUN", c, ", ".join(unrouted))
        if c.lease is None:
            try:
                c.lease = c.hub.take_lease(c.common_name, c.ccd, trio.current_time())
            except (PoolExhausted, FixedAddressError) as exc:
                raise NegotiationError(str(exc)) from None

    def _username_checked(self) -> bool:
        """Someone verified the username (a verify script or the management client-auth);
        an unchecked one never names the client (OpenVPN sets it after verify_user_pass)."""
        cfg = self.client.hub.config
        return cfg.auth_user_pass_verify is not None or cfg.management_client_auth

    def _learn_routes(self) -> list[LearnAddress]:
        """The lease's addresses and the ccd iroutes into the router: learn-address events."""
        c = self.client
        assert c.lease is not None
        nets: list[object] = [item.address for item in reversed(c.lease.pushes())]  # v4 first
        if c.ccd is not None:
            nets += [*c.ccd.iroutes, *c.ccd.iroutes_ipv6]
        events = []
        try:
            for net in nets:
                if (ev := c.hub.router.learn(c.key, net, c.common_name or UNDEF)) is not None:  # type: ignore[arg-type]  # addresses and networks only
                    events.append(ev)
        except RouteLimitExceeded as exc:
            raise NegotiationError(str(exc)) from None
        return events

    async def admit(self, ev: AuthRequest) -> None:
        """Password (or auth-token), addresses, client-connect, routes with learn-address
        (admission.py has the order); the verdict releases or refuses the held key. Scripts
        get half the hand window together, so that a refusal still reaches the client."""
        c = self.client
        scripts, cfg = c.parts.scripts, c.hub.config
        deadline = trio.current_time() + cfg.hand_window / 2

        def left() -> float:
            return max(0.5, deadline - trio.current_time())

        peer_info = PeerInfo.parse(ev.peer_info).items

        def env(common_name: str, established: bool) -> dict[str, str]:
            return client_env(common_name=common_name, username=ev.username or None, addr=c.addr,
                              peer_info=peer_info, chain=ev.peer_chain, lease=c.lease,
                              connected=c.created, established=established)

        early = env(ev.common_name, False)
        creds = await check_credentials(scripts, ev, c.addr, {**scripts.daemon, **early}, left())
        user = printable_username(ev.username)
        why = creds.why
        tell = creds.reason
        if why is None:
            why, tell = await self._ask_management(ev)
        if why is None and cfg.auth_user_pass_verify is not None:
            log.info("%r: user %r authenticated", c, user)
        elif why is not None:
            log.warning("%r: user %r refused: %s", c, user, why)
        try:
            if why is None:
                self._take_addresses(ev.common_name, ev.username)
                self.hooks.env = env(c.common_name, True)
                if cfg.client_connect is not None:
                    self._take_addresses(ev.common_name, ev.username, await self.hooks.client_connect(left()))
                    self.hooks.env = env(c.common_name, True)  # the file may have moved the client
                if c.ccd_extra is not None:  # management client-auth lines come last, as in OpenVPN
                    self._take_addresses(ev.common_name, ev.username, c.ccd_extra)
                for learned in self._learn_routes():
                    await self.hooks.learn_address(learned)
        except NegotiationError as exc:
            why = str(exc)
            log.warning("%r refused: %s", c, why)
            c.cleanup(trio.current_time())
        self.admitted = why is None
        self.username = remap_name(ev.username) if cfg.auth_user_pass_verify is not None else ""  # else unchecked
        try:
            await c.stack.commands.send(AuthVerdict(why is None, tell, creds.token))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the session already ended
        if self.admitted and creds.token is not None and c.nursery is not None:
            c.nursery.start_soon(self._renew_token, creds.token, ev.username)

    async def reauthenticate(self, ev: AuthRequest) -> None:
        """A renegotiation: the same username, and its password or auth-token checked again
        (OpenVPN does the same); a refusal ends the session."""
        c = self.client
        why: str | None = "the username changed at renegotiation"
        reason = ""
        if remap_name(ev.username) == self.username:
            scripts = c.parts.scripts
            creds = await check_credentials(scripts, ev, c.addr, {**scripts.daemon, **self.hooks.env},
                                            c.hub.config.hand_window / 2)
            why, reason = creds.why, creds.reason
            if why is None:
                why, reason = await self._ask_management(ev)  # >CLIENT:REAUTH
        if why is not None:
            log.warning("%r refused at renegotiation: %s", c, why)
        try:
            await c.stack.commands.send(AuthVerdict(why is None, reason, key_id=ev.key_id))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the session already ended

    async def _ask_management(self, ev: AuthRequest) -> tuple[str | None, str]:
        """management-client-auth (>CLIENT:CONNECT or REAUTH): (None, "") to go on, else
        (why, what AUTH_FAILED tells the client); nothing to ask without it."""
        c = self.client
        if not c.hub.config.management_client_auth or c.hub.observer is None:
            return None, ""
        return await c.hub.observer.authorize(c, ev)

    async def _renew_token(self, token: str, username: str) -> None:
        """auth-gen-token renewal: every `renewal` seconds a fresh token (same session id and
        initial time), pushed to the client, so that its token never runs out while it is
        connected (a token is valid for twice the renewal time)."""
        c = self.client
        cfg, key = c.hub.config.auth_gen_token, c.parts.scripts.token_key
        assert cfg is not None and key is not None
        while True:
            await trio.sleep(cfg.renewal)
            token = make_token(key, username, int(time.time()), renew=token)
            try:
                await c.stack.commands.send(PushAuthToken(token))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the session is ending

