"""The server's internal multiplexer: which client a tunnel packet belongs to, as a pure core.

Theory of operation
-------------------
A routing table maps virtual addresses and networks to a client key (whatever the server
uses to name one client session). A client owns its pool or ccd address (a host route,
/32 or /128) and the networks of its ccd `iroute`/`iroute-ipv6` lines. Lookups take the
longest matching prefix, as OpenVPN's virtual-address hash does with its CIDR fallback.

Host routes live in a dict keyed by the packed address bytes, so a lookup for a pool
address costs one slice of the packet and one dict probe. Shorter prefixes live in one
dict per prefix length (keyed by the network number), tried longest first; there are at
most 33 (IPv4) or 129 (IPv6) of them and in practice a handful.

Three questions are answered per packet, all without raising on garbage (a packet too
short for its IP header, or of another IP version, is counted as malformed):

- `route_from_tun`: a packet the kernel wrote to the TUN goes to the destination's owner.
  Multicast and limited broadcast go to every client (`tun_targets`).
- `check_source`: a client may only send from addresses it owns; others are dropped and
  counted. IPv6 link-local sources (fe80::/10) are tolerated, as OpenVPN does.
- `route_from_client`: a client's packet goes to the TUN; with client-to-client a
  unicast to another client's address is delivered directly, and multicast goes to every
  other client as well as to the TUN.

Learning or forgetting a route returns the `learn-address` event (add/update/delete) a
service runs the script for. A route another client owned moves over ("update"). Each
client holds at most `max_routes_per_client` routes (OpenVPN's default 256).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Generic, Literal, TypeVar

from trivpn.errors import TrivpnError
from trivpn.records import dataclass

__all__ = [
    "MAX_ROUTES_PER_CLIENT",
    "Drop",
    "DropReason",
    "LearnAddress",
    "RouteLimitExceeded",
    "Router",
    "RouterCounters",
    "ToClient",
    "ToTun",
    "packet_addresses",
]

MAX_ROUTES_PER_CLIENT = 256

K = TypeVar("K", bound=Hashable)
Network = IPv4Network | IPv6Network
Address = IPv4Address | IPv6Address


class RouteLimitExceeded(TrivpnError):
    """A client would own more routes than max-routes-per-client allows."""


@dataclass(frozen=True, slots=True)
class LearnAddress:
    """A `learn-address` script call: `op address [common_name]` (no CN on delete)."""

    op: Literal["add", "update", "delete"]
    address: str
    common_name: str | None = None


@dataclass(frozen=True, slots=True)
class ToTun(Generic[K]):
    """Write the packet to the TUN; `also_to` get a copy (client-to-client multicast)."""

    also_to: tuple[K, ...] = ()


@dataclass(frozen=True, slots=True)
class ToClient(Generic[K]):
    """Deliver the packet to another client's session without touching the TUN."""

    client: K


class DropReason(enum.Enum):
    MALFORMED = "malformed"
    BAD_SOURCE = "bad source address"


@dataclass(frozen=True, slots=True)
class Drop:
    reason: DropReason


@dataclass(slots=True)
class RouterCounters:
    """What was dropped or unroutable, for logs and the status output."""

    malformed: int = 0
    bad_source: int = 0
    no_route: int = 0
    route_limit: int = 0


def packet_addresses(packet: bytes) -> tuple[bytes, bytes] | None:
    """(source, destination) as packed bytes from a raw IPv4/IPv6 header, or None."""
    if not packet:
        return None
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20 or packet[0] & 0x0F < 5:
            return None
        return packet[12:16], packet[16:20]
    if version == 6:
        if len(packet) < 40:
            return None
        return packet[8:24], packet[24:40]
    return None


def _is_multicast(dst: bytes) -> bool:
    if len(dst) == 4:
        return dst[0] & 0xF0 == 0xE0 or dst == b"\xff\xff\xff\xff"
    return dst[0] == 0xFF


def _is_link_local_v6(src: bytes) -> bool:
    return len(src) == 16 and src[0] == 0xFE and src[1] & 0xC0 == 0x80


@dataclass(slots=True)
class _Family(Generic[K]):
    bits: int
    hosts: dict[bytes, K] = field(default_factory=dict)
    nets: dict[int, dict[int, K]] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)  # prefix lengths in `nets`, longest first

    def lookup(self, addr: bytes) -> K | None:
        owner = self.hosts.get(addr)
        if owner is not None or not self.lengths:
            return owner
        value = int.from_bytes(addr, "big")
        for plen in self.lengths:
            owner = self.nets[plen].get(value >> (self.bits - plen))
            if owner is not None:
                return owner
        return None


def _key(net: Network) -> tuple[int, int, bytes | int]:
    """(family bits, prefix length, host bytes or network number)."""
    bits = net.max_prefixlen
    if net.prefixlen == bits:
        return bits, bits, net.network_address.packed
    return bits, net.prefixlen, int(net.network_address) >> (bits - net.prefixlen)


class Router(Generic[K]):
    """One routing table for every client of a server (all listeners share it)."""

    def __init__(self, max_routes_per_client: int = MAX_ROUTES_PER_CLIENT) -> None:
        if max_routes_per_client < 1:
            raise ValueError("max_routes_per_client must be at least 1")
        self.max_routes_per_client = max_routes_per_client
        self._families: dict[int, _Family[K]] = {32: _Family(32), 128: _Family(128)}
        self._owned: dict[K, dict[Network, None]] = {}  # insertion-ordered set per client
        self.counters = RouterCounters()

    # ---- the table ----------------------------------------------------------------------

    def _owner(self, net: Network) -> K | None:
        bits, plen, k = _key(net)
        fam = self._families[bits]
        return fam.hosts.get(k) if isinstance(k, bytes) else fam.nets.get(plen, {}).get(k)

    def _put(self, net: Network, client: K | None) -> None:
        bits, plen, k = _key(net)
        fam = self._families[bits]
        if isinstance(k, bytes):
            if client is None:
                fam.hosts.pop(k, None)
            else:
                fam.hosts[k] = client
            return
        table = fam.nets.setdefault(plen, {})
        if client is None:
            table.pop(k, None)
            if not table:
                del fam.nets[plen]
        else:
            table[k] = client
        fam.lengths = sorted(fam.nets, reverse=True)

    def learn(
        self, client: K, route: Address | Network, common_name: str | None = None
    ) -> LearnAddress | None:
        """Make `client` own `route` (a virtual address or an iroute network).

        Returns the learn-address event: "add" for a new route, "update" when it moves from
        another client, None when `client` already owns it. Raises RouteLimitExceeded."""
        net = ip_network(route, strict=False)
        previous = self._owner(net)
        if previous == client:
            return None
        owned = self._owned.setdefault(client, {})
        if len(owned) >= self.max_routes_per_client:
            self.counters.route_limit += 1
            if not owned:
                del self._owned[client]
            raise RouteLimitExceeded(
                f"client would own more than {self.max_routes_per_client} routes; {net} not learned"
            )
        if previous is not None:
            prev_owned = self._owned.get(previous)
            if prev_owned is not None:
                prev_owned.pop(net, None)
                if not prev_owned:
                    del self._owned[previous]
        self._put(net, client)
        owned[net] = None
        return LearnAddress("add" if previous is None else "update", _text(net), common_name)

    def unlearn(self, client: K, route: Address | Network) -> LearnAddress | None:
        """Drop one route if `client` owns it; the "delete" event, else None."""
        net = ip_network(route, strict=False)
        owned = self._owned.get(client)
        if owned is None or net not in owned:
            return None
        del owned[net]
        if not owned:
            del self._owned[client]
        self._put(net, None)
        return LearnAddress("delete", _text(net))

    def forget_client(self, client: K) -> list[LearnAddress]:
        """Remove every route of a departing client; one "delete" event per route."""
        owned = self._owned.pop(client, {})
        for net in owned:
            self._put(net, None)
        return [LearnAddress("delete", _text(net)) for net in owned]

    def routes(self, client: K | None = None) -> list[tuple[Network, K]]:
        """(route, owner) pairs, per client in learning order (for the status ROUTING_TABLE)."""
        clients = self._owned if client is None else {client: self._owned.get(client, {})}
        return [(net, c) for c, owned in clients.items() for net in owned]

    @property
    def clients(self) -> list[K]:
        return list(self._owned)

    # ---- per packet ---------------------------------------------------------------------

    def owner_of(self, addr: bytes) -> K | None:
        """The client owning a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
        fam = self._families.get(len(addr) * 8)
        return None if fam is None else fam.lookup(addr)

    def route_from_tun(self, packet: bytes) -> K | None:
        """The client a unicast packet from the TUN goes to; None (counted) otherwise.
        Multicast and broadcast return None here: see `tun_targets`."""
        addrs = packet_addresses(packet)
        if addrs is None:
            self.counters.malformed += 1
            return None
        owner = self.owner_of(addrs[1])
        if owner is None:
            self.counters.no_route += 1
        return owner

    def tun_targets(self, packet: bytes) -> list[K]:
        """Every client a TUN packet goes to: all for multicast/broadcast, else its owner."""
        addrs = packet_addresses(packet)
        if addrs is not None and _is_multicast(addrs[1]):
            return list(self._owned)
        owner = self.route_from_tun(packet)
        return [] if owner is None else [owner]

    def check_source(self, client: K, packet: bytes) -> bool:
        """Whether `client` may send this packet: it owns the source address (IPv6
        link-local tolerated). False is counted (bad_source, or malformed)."""
        addrs = packet_addresses(packet)
        if addrs is None:
            self.counters.malformed += 1
            return False
        return self._source_ok(client, addrs[0])

    def _source_ok(self, client: K, src: bytes) -> bool:
        if self.owner_of(src) == client or _is_link_local_v6(src):
            return True
        self.counters.bad_source += 1
        return False

    def route_from_client(
        self, client: K, packet: bytes, client_to_client: bool
    ) -> ToTun[K] | ToClient[K] | Drop:
        """Where a decrypted packet from `client` goes (see the module doc)."""
        addrs = packet_addresses(packet)
        if addrs is None:
            self.counters.malformed += 1
            return Drop(DropReason.MALFORMED)
        if not self._source_ok(client, addrs[0]):
            return Drop(DropReason.BAD_SOURCE)
        if not client_to_client:
            return ToTun()
        dst = addrs[1]
        if _is_multicast(dst):
            return ToTun(tuple(c for c in self._owned if c != client))
        owner = self.owner_of(dst)
        return ToTun() if owner is None else ToClient(owner)


def _text(net: Network) -> str:
    """How learn-address names a route: a bare address for a host, else CIDR."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)
