"""The server's shared state and its packet switch (no tasks of its own).

Every client session and the TUN service reach the other clients only through here: the
address pool, the routing table (keyed by a server-wide client number) and each client's
inbound channel. Delivery never waits: a full channel (a slow client, a busy TUN writer)
drops the batch and counts it, so one client can never stall another.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import trio

from trivpn.records import dataclass
from trivpn.server.ccd import CcdEntry
from trivpn.server.config_model import ServerConfig
from trivpn.server.pool import AddressPool
from trivpn.server.pool_types import Lease
from trivpn.server.routing import Drop, Router, ToClient

if TYPE_CHECKING:
    from trivpn.observe.hooks import ServerObserver

__all__ = ["Hub", "HubCounters", "Inbound", "PacketSink"]

log = logging.getLogger("trivpn.server")


class PacketSink(Protocol):
    """The TUN side: takes a batch at once or raises trio.WouldBlock (tun.TunSink, or a
    memory channel in tests)."""

    def send_nowait(self, value: list[bytes]) -> None: ...


class Inbound(Protocol):
    """What the hub needs of a client: the channel its stack encrypts packets from, and
    its common name with a way to retire it (a newer session with that name replaces it)."""

    @property
    def to_client(self) -> PacketSink: ...

    common_name: str

    def retire(self, now: float) -> None: ...


@dataclass(slots=True)
class HubCounters:
    """Packets the switch dropped because a channel was full (routing drops: Router.counters)."""

    client_full: int = 0
    tun_full: int = 0


class Hub:
    """Pool, router, client table and the channel to the TUN writer."""

    def __init__(self, config: ServerConfig, tun_out: PacketSink) -> None:
        self.config = config
        # No range at all ('nopool', or 'mode server' without 'ifconfig-pool'): only the
        # fixed addresses of client-config-dir, never the helper's pool behind the config's back.
        self.pool = AddressPool(
            config.pool, config.pool_ipv6, fixed_only=True, network=config.network,
            server=config.ifconfig[0] if config.ifconfig is not None else None,
        )
        self.router: Router[int] = Router(config.max_routes_per_client)
        self.clients: dict[int, Inbound] = {}
        self.counters = HubCounters()
        self._tun_out = tun_out
        self._next_key = 0
        #: management (client-auth, >CLIENT: notifications) and metrics, when configured
        self.observer: ServerObserver | None = None

    def new_key(self) -> int:
        """A server-wide client number (never reused; the router's key)."""
        self._next_key += 1
        return self._next_key

    def take_lease(self, common_name: str, ccd: CcdEntry | None, now: float) -> Lease:
        """A client's addresses: the ccd entry's fixed ones, else from the pool (raises
        PoolExhausted or FixedAddressError)."""
        ipv4 = ccd.ipv4_push(self.config.topology) if ccd is not None else None
        ipv6 = ccd.ifconfig_ipv6_push if ccd is not None else None
        if ipv4 is not None or ipv6 is not None:
            return self.pool.reserve_fixed(common_name or None, ipv4=ipv4, ipv6=ipv6, now=now)
        return self.pool.acquire(common_name or None, self.config.duplicate_cn)

    def retire_common_name(self, common_name: str, keep: int, now: float) -> int:
        """Without duplicate-cn a common name has one session: retire the others (their
        addresses are free again at once, so the newcomer gets the same one). Returns how
        many were retired."""
        if self.config.duplicate_cn or not common_name:
            return 0
        older = [c for k, c in self.clients.items() if k != keep and c.common_name == common_name]
        for client in older:
            client.retire(now)
        return len(older)

    def to_client(self, key: int, batch: list[bytes]) -> None:
        client = self.clients.get(key)
        if client is None:
            return
        try:
            client.to_client.send_nowait(batch)
        except trio.WouldBlock:
            self.counters.client_full += len(batch)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the client is leaving

    def to_tun(self, batch: list[bytes]) -> None:
        try:
            self._tun_out.send_nowait(batch)
        except trio.WouldBlock:
            self.counters.tun_full += len(batch)

    def from_tun(self, batch: list[bytes]) -> None:
        """Packets the kernel wrote to the TUN: to their owners, one batch per client."""
        out: dict[int, list[bytes]] = {}
        router = self.router
        for packet in batch:
            for key in router.tun_targets(packet):
                out.setdefault(key, []).append(packet)
        for key, packets in out.items():
            self.to_client(key, packets)

    def from_client(self, key: int, batch: list[bytes]) -> None:
        """A client's decrypted packets: source checked, then to the TUN or another client."""
        c2c = self.config.client_to_client
        tun: list[bytes] = []
        others: dict[int, list[bytes]] = {}
        for packet in batch:
            where = self.router.route_from_client(key, packet, c2c)
            if isinstance(where, Drop):
                continue  # counted by the router
            if isinstance(where, ToClient):
                others.setdefault(where.client, []).append(packet)
                continue
            tun.append(packet)
            for other in where.also_to:
                others.setdefault(other, []).append(packet)
        if tun:
            self.to_tun(tun)
        for other, packets in others.items():
            self.to_client(other, packets)
