"""One client of the server: its server-role session stack and the tasks around it.

Built like `trivpn.testing.loopback_server` but fed by the demultiplexer instead of a
connected socket: `net_up` receives the datagrams the demux delivers, `net_down` is drained
by a task that queues them on the listener's socket toward the client's *current* address
(the demux knows it). The data plane is the trio-task plane with its own channel pair: the
hub puts TUN packets for this client into `to_client`, and what the client sends comes out
of the stack's TUN side into `Hub.from_client` (source check, client-to-client).

A UDP client's data packets skip the stack once its data channel has a key: `deliver`
opens them at once with the session's `Decryptor` (`link.rx`) and hands the plaintext to
`Hub.from_client`, in the receiving task, instead of four task hops (muxer, data plane,
`_from_client`). The decryptor still has one user at a time: this and the trio-task plane's
receiving side run in the same thread and `decrypt` never awaits, so their calls never
interleave (packets queued before the first key still take the stack's path). The session
keeps the keys; a peer's OCC EXIT seen here ends the session as it does in the plane.
The other way round the same holds for `Encryptor`: once keyed, a UDP client's packets
from the hub (`to_client`) are sealed in the hub's caller (the TUN reader) and queued on
the listener's socket through `send_direct`, skipping the plane and the client's writer.

The client's identity (common name, ccd entry, lease) lives here, where the status, the
hub and the router read it; how it is chosen, with or without scripts, and how the client
is admitted, re-checked at renegotiation and its auth-token renewed is `Admission`
(clientadmit.py). `run` returns or raises when the session ends; the owner then awaits
`finish`, which gives everything back and runs client-disconnect and the learn-address
deletes.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Awaitable, Callable
from typing import cast

import trio

from trivpn.controlchannel.service import control_payload_size
from trivpn.datachannel.link import PEER_EXITED
from trivpn.datachannel.service import PingExit, PingRestart
from trivpn.errors import SessionRestart
from trivpn.messages import (
    AuthRequest,
    ClientReady,
    SendExit,
    SendExitNotify,
)
from trivpn.networkio.transport import TransportError
from trivpn.packetmuxer import PacketMuxer
from trivpn.server.ccd import CcdEntry
from trivpn.server.clientadmit import Admission
from trivpn.server.demux_types import NewSession
from trivpn.server.hub import Hub
from trivpn.server.pool_types import Lease
from trivpn.server.scripts import SCRIPT_SECONDS
from trivpn.server.sessionparts import SessionParts
from trivpn.session.stack import DATA_CHANNEL_SIZE, SessionStack
from trivpn.tlssession.service import TLSService
from trivpn.wire import is_data_byte0
from trivpn.workers.manager import ServiceFailed

__all__ = ["ClientSession", "as_server_reason"]

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
        #: management `client-auth` lines, laid over the ccd entry at push time
        self.ccd_extra: CcdEntry | None = None
        self.common_name = ""
        self.tls: TLSService | None = None
        self.ready: ClientReady | None = None
        self.cancel_scope = trio.CancelScope()
        self.parts = parts
        self.nursery: trio.Nursery | None = None
        #: how the client gets in: addresses, password or token, scripts (clientadmit.py)
        self.admission = Admission(self)
        to_client, tun_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        #: where the hub puts this client's packets (module docstring)
        self.to_client = _ToClient(self, to_client)
        #: queues sealed datagrams toward the client's current address (the UDP listener sets it)
        self.send_direct: Callable[[list[bytes]], None] | None = None
        #: the network side, for whoever moves the datagrams (UDP listener or networkio)
        self.net_up, net_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        net_down_s, self.net_down = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        tun_down_s, self._tun_down = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        self.stack = SessionStack(
            is_server=True,
            muxer=muxer,
            make_tls=parts.tls_factory(peer_id, self.admission.push, lambda tls: setattr(self, "tls", tls), proto=proto),
            net_up=net_up_r,
            net_down=net_down_s,
            payload_size=control_payload_size(muxer.wrap.overhead, ipv6=":" in addr[0]),
            tun_up=tun_up_r,
            tun_down=tun_down_s,
        )
        self.delivered_dropped = 0
        self._exit_seen = False
        #: told when the client is ready (ClientTable's change hook)
        self.on_ready: Callable[[], None] | None = None

    @classmethod
    def after_cookie(cls, key: int, new: NewSession, parts: SessionParts, hub: Hub) -> ClientSession:
        """A UDP client the demultiplexer admitted; its first packet is already queued."""
        addr = cast(tuple[str, int], new.addr)  # the UDP listener's (host, port)
        muxer = PacketMuxer.server_after_cookie(
            new.wrap, new.local_session_id, new.remote_session_id, client_wkc=new.client_wkc
        )
        client = cls(key, new.session, new.peer_id, addr, muxer, parts.for_client_key(new.client_key), hub)
        client.net_up.send_nowait([new.first_packet])
        return client

    @property
    def peer_chain(self) -> tuple[bytes, ...]:
        """The client's verified certificate chain (DER, leaf first) once TLS is done, else ()."""
        hs = self.tls.schedule.handshake if self.tls is not None else None
        return hs.peer_chain if hs is not None else ()

    def __repr__(self) -> str:
        return f"client {self.common_name or '?'}@{self.addr[0]}:{self.addr[1]} (peer-id {self.peer_id})"

    def deliver(self, datagrams: list[bytes]) -> None:
        """Datagrams from the demux: data packets opened here once keyed (module docstring),
        the rest to the stack; a full channel drops them (the protocol recovers)."""
        link = self.stack.data.link
        rx = link.rx
        if rx is not None and self.nursery is not None:
            data: list[bytes] = []
            rest: list[bytes] = []
            for d in datagrams:
                (data if d and is_data_byte0(d[0]) else rest).append(d)
            if data:
                try:
                    packets = rx.decrypt(data, link.clock())
                except Exception:  # this client's failure, not the listener's: the stack's
                    packets, rest = [], datagrams  # path meets it again in the client's task
                if packets:
                    self.hub.from_client(self.key, packets)
                if rx.peer_exited and not self._exit_seen:
                    self._exit_seen = True
                    self.nursery.start_soon(_peer_exited)
            if not rest:
                return
            datagrams = rest
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
        """Run the stack with `io` moving its datagrams (see `net_up`/`net_down`). The
        session's end reasons are worded for the server's log (`as_server_reason`)."""
        try:
            with self.cancel_scope:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    nursery.start_soon(io)
                    nursery.start_soon(self._from_client)
                    nursery.start_soon(self._watch_events)
                    await self.stack.run()
                    nursery.cancel_scope.cancel()
        except BaseException as exc:
            reworded = as_server_reason(exc)
            if reworded is exc:
                raise
            raise reworded from None

    async def _from_client(self) -> None:
        async for batch in self._tun_down:
            self.hub.from_client(self.key, batch)

    async def _watch_events(self) -> None:
        async for ev in self.stack.events:
            if isinstance(ev, AuthRequest) and ev.key_id:
                await self.admission.reauthenticate(ev)
            elif isinstance(ev, AuthRequest):
                await self.admission.admit(ev)
            elif isinstance(ev, ClientReady) and self.ready is None:
                self.ready = ev
                if self.on_ready is not None:
                    self.on_ready()
                addrs = ", ".join(str(p.address) for p in self.lease.pushes()) if self.lease else "none"
                log.info("%r ready: %s, %s, address %s", self, ev.cipher, ev.key_derivation, addrs)
                if self.hub.observer is not None:
                    self.hub.observer.client_ready(self)

    async def finish(self) -> None:
        """The session ended: give everything back, then client-disconnect (for an admitted
        client) and learn-address delete, shielded from cancellation but bounded in time."""
        self.cleanup(trio.current_time())
        stats = self.stack.data.stats()
        with trio.CancelScope(shield=True), trio.move_on_after(2 * SCRIPT_SECONDS):
            await self.admission.hooks.finish(self.admission.admitted, stats.rx_bytes if stats else 0, stats.tx_bytes if stats else 0,
                                    self.created)

    def retire(self, now: float) -> None:
        """Replaced by a newer session of the same common name: free its addresses now,
        end its task (which cleans up the rest)."""
        self.cleanup(now)
        self.cancel_scope.cancel()

    def cleanup(self, now: float) -> None:
        """Give back the lease and the routes (idempotent; the learn-address deletes wait
        for `finish`)."""
        self.admission.hooks.deletes += self.hub.router.forget_client(self.key)
        if self.lease is not None:
            self.hub.pool.release(self.lease, now)
            self.lease = None


async def _peer_exited() -> None:
    """Ends the client's task like the data plane does on the peer's OCC EXIT."""
    raise SessionRestart(PEER_EXITED)


class _ToClient:
    """The hub's way in: sealed and sent at once when keyed over UDP, else the stack's channel."""

    __slots__ = ("_client", "_channel")

    def __init__(self, client: ClientSession, channel: trio.MemorySendChannel[list[bytes]]) -> None:
        self._client = client
        self._channel = channel

    def send_nowait(self, value: list[bytes]) -> None:
        client = self._client
        link = client.stack.data.link
        tx = link.tx
        if tx is not None and client.send_direct is not None:
            try:
                out = tx.encrypt(value, link.clock())
            except Exception:  # this client's failure, not the TUN reader's: the plane
                self._channel.send_nowait(value)  # meets it again in the client's task
                return
            if out:
                client.send_direct(out)
            return
        self._channel.send_nowait(value)


#: the layers a client and the server share word a lost peer as a client sees it ("the
#: server closed the TCP connection", "no packet from the server for 8 s (ping-restart)");
#: in the server's log the peer is the client
_PEER_WORDED = (TransportError, PingRestart, PingExit)


def as_server_reason(exc: BaseException) -> BaseException:
    """`exc` with those reasons naming the client instead (a copy; `exc` itself when none
    is in it), through exception groups and service wrappers."""
    if isinstance(exc, BaseExceptionGroup):
        parts = [as_server_reason(e) for e in exc.exceptions]
        if all(new is old for new, old in zip(parts, exc.exceptions, strict=True)):
            return exc
        return exc.derive(parts)
    if isinstance(exc, ServiceFailed):
        inner = as_server_reason(exc.error)
        return exc if inner is exc.error else ServiceFailed(exc.service, inner)
    if isinstance(exc, _PEER_WORDED) and len(exc.args) == 1 and "the server" in str(exc.args[0]):
        new = copy.copy(exc)
        new.args = (str(exc.args[0]).replace("the server", "the client"),)
        return new
    return exc
