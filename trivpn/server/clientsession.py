"""One client of the server: its server-role session stack and the tasks around it.

Built like `trivpn.testing.loopback_server` but fed by the demultiplexer instead of a
connected socket: `net_up` receives the datagrams the demux delivers, `net_down` is drained
by a task that queues them on the listener's socket toward the client's *current* address
(the demux knows it). The data plane is the trio-task plane with its own channel pair: the
hub puts TUN packets for this client into `to_client`, and what the client sends comes out
of the stack's TUN side into `Hub.from_client` (source check, client-to-client).

Without scripts or auth-gen-token the pool lease is taken inside the key schedule's push
callable, when the client's certificate is known (its common name picks the address it had
before, or its client-config-dir file a fixed one: see ccdclient.py); its addresses and ccd
iroutes are learned by the router at that moment. With them the schedule holds the key
(AuthRequest) and `_admit` does the same, in OpenVPN's order, around the password or token
check, client-connect and learn-address (admission.py, clienthooks.py), then answers with an
AuthVerdict; renegotiated keys are re-checked by `_reauthenticate`. `run` returns or raises
when the session ends; the owner then awaits `finish`, which gives everything back and runs
client-disconnect and the learn-address deletes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import trio

from trivpn.controlchannel.service import control_payload_size
from trivpn.messages import (
    AuthRequest,
    AuthVerdict,
    ClientReady,
    PushAuthToken,
    SendExit,
    SendExitNotify,
)
from trivpn.packetmuxer import PacketMuxer
from trivpn.server.admission import check_credentials, merge_entries
from trivpn.server.authscript import printable_username
from trivpn.server.authtoken import make_token
from trivpn.server.ccd import CcdEntry
from trivpn.server.ccdclient import client_pushes, find_ccd, unrouted_iroutes
from trivpn.server.clienthooks import ClientHooks
from trivpn.server.demux_types import NewSession
from trivpn.server.hub import Hub
from trivpn.server.pool_types import FixedAddressError, Lease, PoolExhausted
from trivpn.server.routing import LearnAddress, RouteLimitExceeded
from trivpn.server.scripts import SCRIPT_SECONDS, UNDEF, client_env
from trivpn.server.sessionparts import SessionParts, common_name_of
from trivpn.session.stack import DATA_CHANNEL_SIZE, SessionStack
from trivpn.tlssession.negotiation import NegotiationError, PeerInfo
from trivpn.tlssession.service import TLSService

__all__ = ["ClientSession"]

log = logging.getLogger("trivpn.server")

class ClientSession:
    """A client's stack and its pumps (see the module docstring)."""

    def __init__(
        self, key: int, session: int, peer_id: int, addr: tuple[str, int], muxer: PacketMuxer,
        parts: SessionParts, hub: Hub, *, proto: str = "udp",
    ) -> None:
        """`session`/`peer_id` come from the demultiplexer, `muxer` is the session's
        server-role muxer (after the cookie on UDP, a fresh one on TCP)."""
        self.key = key
        self.session = session
        self.peer_id = peer_id
        self.addr = addr
        self.proto = proto
        #: wall-clock creation time (the status report's Connected Since)
        self.created = time.time()
        self.hub = hub
        self.lease: Lease | None = None
        #: the client's client-config-dir entry, once its common name is known
        self.ccd: CcdEntry | None = None
        self.common_name = ""
        self.tls: TLSService | None = None
        self.ready: ClientReady | None = None
        self.cancel_scope = trio.CancelScope()
        self.to_client, tun_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        #: the network side, for whoever moves the datagrams (UDP listener or networkio)
        self.net_up, net_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        net_down_s, self.net_down = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        tun_down_s, self._tun_down = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        self.stack = SessionStack(
            is_server=True,
            muxer=muxer,
            make_tls=parts.tls_factory(peer_id, self._push, lambda tls: setattr(self, "tls", tls), proto=proto),
            net_up=net_up_r,
            net_down=net_down_s,
            payload_size=control_payload_size(muxer.wrap.overhead, ipv6=":" in addr[0]),
            tun_up=tun_up_r,
            tun_down=tun_down_s,
        )
        self.delivered_dropped = 0
        self.parts = parts
        #: the client reached the end of admission (client-disconnect runs for it)
        self.admitted = False
        self.hooks = ClientHooks(parts.scripts)
        self._named = False
        self._username = ""
        self._nursery: trio.Nursery | None = None

    @classmethod
    def after_cookie(cls, key: int, new: NewSession, parts: SessionParts, hub: Hub) -> ClientSession:
        """A UDP client the demultiplexer admitted; its first packet is already queued."""
        addr = cast(tuple[str, int], new.addr)  # the UDP listener's (host, port)
        muxer = PacketMuxer.server_after_cookie(new.wrap, new.local_session_id, new.remote_session_id)
        client = cls(key, new.session, new.peer_id, addr, muxer, parts, hub)
        client.net_up.send_nowait([new.first_packet])
        return client

    def __repr__(self) -> str:
        return f"client {self.common_name or '?'}@{self.addr[0]}:{self.addr[1]} (peer-id {self.peer_id})"

    def _push(self, peer: PeerInfo) -> Sequence[str]:
        """The key schedule asks what to push. Without scripts the addresses are chosen
        right here (ccd file, lease, routes); with them `_admit` already did it."""
        if self.lease is None:
            self._take_addresses(peer.peer_subject, peer.username)
            self._learn_routes()
        assert self.lease is not None
        self.admitted = True
        return client_pushes(self.hub.config.push, self.ccd, self.lease)

    def _take_addresses(self, subject: str, username: str, dyn: CcdEntry | None = None) -> None:
        """Common name, ccd entry (with a client-connect file's options over it), duplicate
        retirement and the lease (NegotiationError refuses the client)."""
        cfg = self.hub.config
        if not self._named:
            self._named = True
            self.common_name = common_name_of(subject)
            if cfg.username_as_common_name and username:
                self.common_name = printable_username(username)  # vetted by the script
            if cfg.client_config_dir is not None:
                self.ccd = find_ccd(cfg.client_config_dir, self.common_name, cfg.ccd_exclusive)
            if self.hub.retire_common_name(self.common_name, self.key, trio.current_time()):
                log.info("%r replaces the older session of %s", self, self.common_name)
        if dyn is not None:
            self.ccd = merge_entries(self.ccd, dyn)
            if self.ccd is not None and self.ccd.disable:
                raise NegotiationError("client is disabled (client-connect)")
            if self.lease is not None and (dyn.ifconfig_push or dyn.ifconfig_ipv6_push):
                self.hub.pool.release(self.lease, trio.current_time())
                self.lease = None
        if self.ccd is not None and (unrouted := unrouted_iroutes(self.ccd, cfg)):
            log.warning("%r: no 'route' sends iroute %s into the TUN", self, ", ".join(unrouted))
        if self.lease is None:
            try:
                self.lease = self.hub.take_lease(self.common_name, self.ccd, trio.current_time())
            except (PoolExhausted, FixedAddressError) as exc:
                raise NegotiationError(str(exc)) from None

    def _learn_routes(self) -> list[LearnAddress]:
        """The lease's addresses and the ccd iroutes into the router: learn-address events."""
        assert self.lease is not None
        nets: list[object] = [item.address for item in reversed(self.lease.pushes())]  # v4 first
        if self.ccd is not None:
            nets += [*self.ccd.iroutes, *self.ccd.iroutes_ipv6]
        events = []
        try:
            for net in nets:
                if (ev := self.hub.router.learn(self.key, net, self.common_name or UNDEF)) is not None:  # type: ignore[arg-type]  # addresses and networks only
                    events.append(ev)
        except RouteLimitExceeded as exc:
            raise NegotiationError(str(exc)) from None
        return events

    def deliver(self, datagrams: list[bytes]) -> None:
        """Datagrams from the demux; a full channel drops them (the protocol recovers)."""
        try:
            self.net_up.send_nowait(datagrams)
        except trio.WouldBlock:
            self.delivered_dropped += len(datagrams)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def say_goodbye(self) -> None:
        """The server is going away: RESTART with cc-exit, else OCC exit on the data channel."""
        if self.tls is None or self.ready is None:
            return
        if self.tls.cc_exit:
            await self.stack.commands.send(SendExit())
        else:
            await self.stack.data_control.send([SendExitNotify(count=2)])

    async def run(self, io: Callable[[], Awaitable[object]]) -> None:
        """Run the stack with `io` moving its datagrams (see `net_up`/`net_down`)."""
        with self.cancel_scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(io)
                nursery.start_soon(self._from_client)
                nursery.start_soon(self._watch_events)
                await self.stack.run()
                nursery.cancel_scope.cancel()

    async def _from_client(self) -> None:
        async for batch in self._tun_down:
            self.hub.from_client(self.key, batch)

    async def _watch_events(self) -> None:
        async for ev in self.stack.events:
            if isinstance(ev, AuthRequest) and ev.key_id:
                await self._reauthenticate(ev)
            elif isinstance(ev, AuthRequest):
                await self._admit(ev)
            elif isinstance(ev, ClientReady) and self.ready is None:
                self.ready = ev
                addrs = ", ".join(str(p.address) for p in self.lease.pushes()) if self.lease else "none"
                log.info("%r ready: %s, %s, address %s", self, ev.cipher, ev.key_derivation, addrs)

    async def _admit(self, ev: AuthRequest) -> None:
        """Password (or auth-token), addresses, client-connect, routes with learn-address
        (admission.py has the order); the verdict releases or refuses the held key. Scripts
        get half the hand window together, so that a refusal still reaches the client."""
        scripts, cfg = self.parts.scripts, self.hub.config
        deadline = trio.current_time() + cfg.hand_window / 2

        def left() -> float:
            return max(0.5, deadline - trio.current_time())

        peer_info = PeerInfo.parse(ev.peer_info).items

        def env(common_name: str, established: bool) -> dict[str, str]:
            return client_env(common_name=common_name, username=ev.username or None, addr=self.addr,
                              peer_info=peer_info, chain=ev.peer_chain, lease=self.lease,
                              connected=self.created, established=established)

        early = env(common_name_of(ev.peer_subject), False)
        creds = await check_credentials(scripts, ev, self.addr, {**scripts.daemon, **early}, left())
        user = printable_username(ev.username)
        why = creds.why
        if why is None and cfg.auth_user_pass_verify is not None:
            log.info("%r: user %r authenticated", self, user)
        elif why is not None:
            log.warning("%r: user %r refused: %s", self, user, why)
        try:
            if why is None:
                self._take_addresses(ev.peer_subject, ev.username)
                self.hooks.env = env(self.common_name, True)
                if cfg.client_connect is not None:
                    self._take_addresses(ev.peer_subject, ev.username, await self.hooks.client_connect(left()))
                    self.hooks.env = env(self.common_name, True)  # the file may have moved the client
                for learned in self._learn_routes():
                    await self.hooks.learn_address(learned)
        except NegotiationError as exc:
            why = str(exc)
            log.warning("%r refused: %s", self, why)
            self.cleanup(trio.current_time())
        self.admitted = why is None
        self._username = ev.username
        try:
            await self.stack.commands.send(AuthVerdict(why is None, creds.reason, creds.token))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the session already ended
        if self.admitted and creds.token is not None and self._nursery is not None:
            self._nursery.start_soon(self._renew_token, creds.token, ev.username)

    async def _reauthenticate(self, ev: AuthRequest) -> None:
        """A renegotiation: the same username, and its password or auth-token checked again
        (OpenVPN does the same); a refusal ends the session."""
        why: str | None = "the username changed at renegotiation"
        reason = ""
        if ev.username == self._username:
            scripts = self.parts.scripts
            creds = await check_credentials(scripts, ev, self.addr, {**scripts.daemon, **self.hooks.env},
                                            self.hub.config.hand_window / 2)
            why, reason = creds.why, creds.reason
        if why is not None:
            log.warning("%r refused at renegotiation: %s", self, why)
        try:
            await self.stack.commands.send(AuthVerdict(why is None, reason, key_id=ev.key_id))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the session already ended

    async def _renew_token(self, token: str, username: str) -> None:
        """auth-gen-token renewal: every `renewal` seconds a fresh token (same session id and
        initial time), pushed to the client, so that its token never runs out while it is
        connected (a token is valid for twice the renewal time)."""
        cfg, key = self.hub.config.auth_gen_token, self.parts.scripts.token_key
        assert cfg is not None and key is not None
        while True:
            await trio.sleep(cfg.renewal)
            token = make_token(key, username, int(time.time()), renew=token)
            try:
                await self.stack.commands.send(PushAuthToken(token))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the session is ending

    async def finish(self) -> None:
        """The session ended: give everything back, then client-disconnect (for an admitted
        client) and learn-address delete, shielded from cancellation but bounded in time."""
        self.cleanup(trio.current_time())
        stats = self.stack.data.stats()
        with trio.CancelScope(shield=True), trio.move_on_after(2 * SCRIPT_SECONDS):
            await self.hooks.finish(self.admitted, stats.rx_bytes if stats else 0, stats.tx_bytes if stats else 0,
                                    self.created)

    def retire(self, now: float) -> None:
        """Replaced by a newer session of the same common name: free its addresses now,
        end its task (which cleans up the rest)."""
        self.cleanup(now)
        self.cancel_scope.cancel()

    def cleanup(self, now: float) -> None:
        """Give back the lease and the routes (idempotent; the learn-address deletes wait
        for `finish`)."""
        self.hooks.deletes += self.hub.router.forget_client(self.key)
        if self.lease is not None:
            self.hub.pool.release(self.lease, now)
            self.lease = None
