"""The server's virtual address pool (OpenVPN's `ifconfig-pool`), as a pure core.

Theory of operation
-------------------
The pool is an array of *entries* indexed by a *handle* 0..size-1. One handle stands for
one IPv4 slot and, when an IPv6 pool exists, for the IPv6 address at the same index (the
two pools share the index, as in OpenVPN). IPv4 slots come in two layouts:

- INDIV (topology subnet): handle i is the client address base+i; the client is pushed
  `ifconfig <addr> <netmask>`.
- NET30 (topology net30): handle i is the /30 at base+4i; the server end is base+4i+1 and
  the client base+4i+2; the client is pushed `ifconfig <client> <server end>`.

An entry remembers whether it is in use, the common name that last held it and when it was
released. `acquire` picks, like OpenVPN: with duplicate-cn the first free entry (no CN is
recorded); otherwise a free entry this CN held before, else the free non-fixed entry
released longest ago (ties: lowest handle). A disconnect releases *softly* (the CN stays,
so the client gets its address back); a *hard* release forgets the CN.

Without a dynamic range (`server N M nopool`, or `mode server` without `ifconfig-pool`) the
pool is `fixed_only`: it hands out no address (a client without a fixed one is refused, as
OpenVPN gives it none) and only keeps the fixed ones apart.

Addresses a client-config-dir file fixes (`ifconfig-push`, `ifconfig-ipv6-push`) are
handed out by `reserve_fixed`, which refuses an address another live client holds (fixed or
from the pool) or one outside the server network. Unlike OpenVPN 2.6, a fixed IPv4 address
with an IPv6 pool never pushes the IPv6 address of a handle that was given back (OpenVPN's
possible double allocation): the lease keeps a pool handle for its IPv6 address, the one of
its fixed IPv4 address when that lies in the pool.

Every lease carries a unique id; releasing a stale copy of a lease is a no-op, so a late
release can never free an entry someone else holds now. `ifconfig-pool-persist` files are
parsed and written by trivpn.server.pool_persist; `load_persist`/`persist_entries` are the
pool side of it. No clock reads: `now` is passed in.
"""

from __future__ import annotations

import heapq
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from trivpn.errors import ConfigError
from trivpn.records import dataclass
from trivpn.server.pool_types import (
    POOL_MAX,
    FixedAddressError,
    IfconfigIPv6Push,
    IfconfigPush,
    IPv4Pool,
    IPv6Pool,
    Lease,
    PersistEntry,
    PoolExhausted,
    PoolType,
)

__all__ = [
    "AddressPool",
    "FixedAddressError",
    "IPv4Pool",
    "IPv6Pool",
    "IfconfigIPv6Push",
    "IfconfigPush",
    "Lease",
    "PersistEntry",
    "PoolExhausted",
    "PoolType",
    "pool_for_server",
]


@dataclass(slots=True)
class _Entry:
    in_use: bool = False
    common_name: str | None = None
    last_release: float = 0.0
    fixed: bool = False
    holder: int | None = None  # lease_id holding it


class AddressPool:
    """One address pool shared by every listener of a server."""

    def __init__(
        self, ipv4: IPv4Pool | None, ipv6: IPv6Pool | None = None, *, fixed_only: bool = False,
        network: IPv4Network | None = None, server: IPv4Address | None = None,
    ) -> None:
        """`fixed_only` (no range at all): no dynamic address; `network` and `server` (the
        server's own address) then still bound the fixed IPv4 addresses."""
        if ipv4 is None and ipv6 is None and not fixed_only:
            raise ConfigError("an address pool needs an IPv4 or an IPv6 range")
        self.ipv4 = ipv4
        self._network = ipv4.network if ipv4 is not None else network
        self._server = ipv4.server if ipv4 is not None else server
        self.ipv6 = ipv6
        sizes: list[int] = []
        self._v4_base = 0
        if ipv4 is not None:
            start, end = int(ipv4.start), int(ipv4.end)
            if start > end:
                raise ConfigError(f"pool start {ipv4.start} is above its end {ipv4.end}")
            if end - start >= POOL_MAX:
                raise ConfigError(
                    f"pool {ipv4.start}-{ipv4.end} is larger than {POOL_MAX} addresses"
                )
            if ipv4.type is PoolType.NET30:
                self._v4_base = start & ~3
                sizes.append((((end | 3) + 1) - self._v4_base) >> 2)
            else:
                if ipv4.netmask is None:
                    raise ConfigError("a subnet pool needs a netmask to push")
                self._v4_base = start
                sizes.append(end - start + 1)
        self._v6_base = 0
        if ipv6 is not None:
            if not 64 <= ipv6.netbits <= 124:
                raise ConfigError(
                    f"IPv6 pool prefix /{ipv6.netbits} is not within /64../124 (as OpenVPN requires)"
                )
            host_bits = 128 - ipv6.netbits
            base = int(ipv6.base)
            host = base & ((1 << min(host_bits, 32)) - 1)
            if host == 0:  # never hand out the subnet-router anycast address
                base += 1
                host = 1
            self._v6_base = base
            sizes.append((1 << host_bits) - host if ipv6.netbits >= 112 else POOL_MAX)
        self.size = min(sizes) if sizes else 0
        if sizes and self.size < 2:
            raise ConfigError(
                f"address pool too small ({self.size}), it needs at least 2 addresses"
            )
        self._entries = [_Entry() for _ in range(self.size)]
        # Indexes that make acquire O(log n) instead of OpenVPN's scan (a /16 pool has 65,534
        # entries): free non-fixed entries by (last release, handle) and by handle, both
        # heaps with lazy deletion (an item is valid only if it still describes the entry),
        # and the handles each CN is remembered on.
        self._by_release: list[tuple[float, int]] = [(0.0, i) for i in range(self.size)]
        self._by_handle: list[int] = list(range(self.size))
        self._cn_handles: dict[str, set[int]] = {}
        self._next_id = 1
        self._fixed_v4: dict[IPv4Address, int] = {}
        self._fixed_v6: dict[IPv6Address, int] = {}
        self._live: dict[int, Lease] = {}
        # The server's own tunnel addresses may lie in a manual range (`ifconfig 10.8.0.1 ...`
        # with `ifconfig-pool 10.8.0.1 ...`): their slots are never handed out (for net30 the
        # /30 holding it; the IPv4 and IPv6 sides share the slot index).
        self._reserved = {
            h
            for h in (
                self.handle_of_ipv4(ipv4.server) if ipv4 is not None and ipv4.server is not None else None,
                self.handle_of_ipv6(ipv6.server) if ipv6 is not None and ipv6.server is not None else None,
            )
            if h is not None
        }
        if self._reserved and self.size - len(self._reserved) < 1:
            raise ConfigError("the address pool holds nothing but the server's own address")
        for h in self._reserved:
            self._entries[h].in_use = True  # with no holder: no release ever frees it

    # ---- address arithmetic -------------------------------------------------------------

    def _v4_for(self, handle: int) -> IfconfigPush | None:
        v4 = self.ipv4
        if v4 is None:
            return None
        if v4.type is PoolType.NET30:
            b = self._v4_base + 4 * handle
            return IfconfigPush(IPv4Address(b + 2), IPv4Address(b + 1), net30=True)
        assert v4.netmask is not None
        return IfconfigPush(IPv4Address(self._v4_base + handle), v4.netmask)

    def _v6_for(self, handle: int) -> IfconfigIPv6Push | None:
        v6 = self.ipv6
        if v6 is None:
            return None
        return IfconfigIPv6Push(IPv6Address(self._v6_base + handle), v6.netbits, v6.server)

    def handle_of_ipv4(self, addr: IPv4Address) -> int | None:
        """The handle whose slot contains `addr` (any address of the /30 for net30)."""
        if self.ipv4 is None:
            return None
        off = int(addr) - self._v4_base
        h = off >> 2 if self.ipv4.type is PoolType.NET30 else off
        return h if 0 <= off and h < self.size else None

    def handle_of_ipv6(self, addr: IPv6Address) -> int | None:
        if self.ipv6 is None:
            return None
        off = int(addr) - self._v6_base
        return off if 0 <= off < self.size else None

    def ipv4_base(self, handle: int) -> IPv4Address | None:
        """What the persist file stores: the client address, or the /30 base for net30."""
        if self.ipv4 is None:
            return None
        step = 4 if self.ipv4.type is PoolType.NET30 else 1
        return IPv4Address(self._v4_base + step * handle)

    # ---- acquire / release --------------------------------------------------------------

    def _find(self, common_name: str | None, duplicate_cn: bool) -> int | None:
        entries = self._entries
        if duplicate_cn:
            heap = self._by_handle
            while heap and (entries[heap[0]].in_use or entries[heap[0]].fixed):
                heapq.heappop(heap)
            return heap[0] if heap else None
        if common_name is not None:
            mine = [h for h in self._cn_handles.get(common_name, ()) if not entries[h].in_use]
            if mine:
                return min(mine)
        by_release = self._by_release
        while by_release:
            released, h = by_release[0]
            e = entries[h]
            if not e.in_use and not e.fixed and e.last_release == released:
                return h
            heapq.heappop(by_release)
        return None

    def _set_cn(self, h: int, common_name: str | None) -> None:
        e = self._entries[h]
        if e.common_name is not None:
            handles = self._cn_handles[e.common_name]
            handles.discard(h)
            if not handles:
                del self._cn_handles[e.common_name]
        e.common_name = common_name
        if common_name is not None:
            self._cn_handles.setdefault(common_name, set()).add(h)

    def _freed(self, h: int) -> None:
        """Entry `h` just became free (or changed its release time or fixed flag)."""
        e = self._entries[h]
        e.in_use, e.holder = False, None
        if e.fixed:
            return
        heapq.heappush(self._by_release, (e.last_release, h))
        heapq.heappush(self._by_handle, h)
        if len(self._by_release) > 2 * self.size + 64:  # stale items from CN re-acquires
            free = [i for i, x in enumerate(self._entries) if not x.in_use and not x.fixed]
            self._by_release = [(self._entries[i].last_release, i) for i in free]
            heapq.heapify(self._by_release)
            self._by_handle = free

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def acquire(self, common_name: str | None, duplicate_cn: bool = False) -> Lease:
        """Give a newcomer an address, following OpenVPN's choice (see the module doc)."""
        h = self._find(common_name, duplicate_cn)
        if h is None and self.size == 0:
            raise PoolExhausted(
                f"no address for {common_name or 'this client'!r}: the server has no dynamic pool ('nopool' or no "
                "'ifconfig-pool'); give it one with 'ifconfig-push' in client-config-dir"
            )
        if h is None:
            raise PoolExhausted(
                f"address pool exhausted: all {self.size - len(self._reserved)} addresses are in use"
            )
        lease = Lease(
            lease_id=self._new_id(),
            common_name=common_name,
            handle=h,
            ipv4=self._v4_for(h),
            ipv6=self._v6_for(h),
        )
        e = self._entries[h]
        e.in_use, e.holder = True, lease.lease_id
        self._set_cn(h, None if duplicate_cn else common_name)
        self._live[lease.lease_id] = lease
        return lease

    def release(self, lease: Lease, now: float, hard: bool | None = None) -> bool:
        """Give a lease's addresses back. Soft (CN kept) unless `hard`; by default hard
        exactly for leases with a fixed IPv4 address. False for a stale or unknown lease."""
        if self._live.pop(lease.lease_id, None) is None:
            return False
        hard = lease.fixed_ipv4 if hard is None else hard
        if lease.handle is not None:
            e = self._entries[lease.handle]
            if e.holder == lease.lease_id:
                e.last_release = now
                if hard:
                    self._set_cn(lease.handle, None)
                self._freed(lease.handle)
        for h in lease.blocked:
            if self._entries[h].holder == lease.lease_id:
                self._freed(h)
        if lease.fixed_ipv4 and lease.ipv4 is not None:
            self._fixed_v4.pop(lease.ipv4.address, None)
        if lease.fixed_ipv6 and lease.ipv6 is not None:
            self._fixed_v6.pop(lease.ipv6.address, None)
        return True

    def is_live(self, lease: Lease) -> bool:
        return lease.lease_id in self._live

    @property
    def in_use(self) -> int:
        return sum(1 for e in self._entries if e.in_use) - len(self._reserved)

    # ---- fixed addresses (client-config-dir) --------------------------------------------

    def reserve_fixed(
        self,
        common_name: str | None,
        *,
        ipv4: IfconfigPush | None = None,
        ipv6: IfconfigIPv6Push | None = None,
        replaces: Lease | None = None,
        now: float,
    ) -> Lease:
        """Swap a client's pool lease (`replaces`, may be None) for ccd-fixed addresses.

        Raises FixedAddressError, leaving `replaces` intact, when an address lies outside
        the server network, is the server's own, or another live client holds it."""
        if ipv4 is None and ipv6 is None:
            raise FixedAddressError("reserve_fixed needs an IPv4 or an IPv6 address")
        owner = replaces.lease_id if replaces is not None and self.is_live(replaces) else None
        blocked: list[int] = []
        v4_handle: int | None = None
        if ipv4 is not None:
            v4_handle = self._check_v4(ipv4.address, owner)
            if v4_handle is not None:
                blocked.append(v4_handle)
        if ipv6 is not None:
            h6 = self._check_v6(ipv6.address, owner)
            if h6 is not None and h6 not in blocked:
                blocked.append(h6)
        # Which pool handle, if any, keeps serving an address the ccd file did not fix.
        handle: int | None = None
        pool_v4 = self.ipv4 is not None and ipv4 is None
        pool_v6 = self.ipv6 is not None and ipv6 is None
        if pool_v4 or pool_v6:
            if ipv4 is not None and v4_handle is not None:
                handle = v4_handle  # the IPv6 address sharing the fixed IPv4 address's index
            elif replaces is not None and owner is not None:
                handle = replaces.handle
        if handle is not None and handle in blocked:
            blocked.remove(handle)
        lease = Lease(
            lease_id=self._new_id(),
            common_name=common_name,
            handle=handle,
            ipv4=ipv4
            if ipv4 is not None
            else (self._v4_for(handle) if handle is not None else None),
            ipv6=ipv6
            if ipv6 is not None
            else (self._v6_for(handle) if handle is not None else None),
            fixed_ipv4=ipv4 is not None,
            fixed_ipv6=ipv6 is not None,
            blocked=tuple(blocked),
        )
        if replaces is not None and owner is not None:
            # hard when the IPv4 address is fixed: the pool slot's CN must not stick
            self.release(replaces, now, hard=ipv4 is not None)
        for h in (*blocked, *(() if handle is None else (handle,))):
            e = self._entries[h]
            e.in_use, e.holder = True, lease.lease_id
        if ipv4 is not None:
            self._fixed_v4[ipv4.address] = lease.lease_id
        if ipv6 is not None:
            self._fixed_v6[ipv6.address] = lease.lease_id
        self._live[lease.lease_id] = lease
        return lease

    def _holder_ok(self, h: int | None, owner: int | None, what: str) -> int | None:
        if h is not None and h in self._reserved:
            raise FixedAddressError(f"fixed address {what} is in the pool slot of the server's own address")
        if h is not None:
            e = self._entries[h]
            if e.in_use and e.holder != owner:
                raise FixedAddressError(f"fixed address {what} is in use by another client")
        return h

    def _check_v4(self, addr: IPv4Address, owner: int | None) -> int | None:
        if (net := self._network) is not None:
            if addr not in net:
                raise FixedAddressError(f"fixed address {addr} is outside the server network {net}")
            if net.prefixlen < 31 and addr in (net.network_address, net.broadcast_address):
                raise FixedAddressError(
                    f"fixed address {addr} is the network or broadcast address of {net}"
                )
        if addr == self._server:
            raise FixedAddressError(f"fixed address {addr} is the server's own address")
        if self._fixed_v4.get(addr, owner) != owner:
            raise FixedAddressError(f"fixed address {addr} is already given to another client")
        return self._holder_ok(self.handle_of_ipv4(addr), owner, str(addr))

    def _check_v6(self, addr: IPv6Address, owner: int | None) -> int | None:
        v6 = self.ipv6
        if v6 is not None:
            net = IPv6Network((v6.base, v6.netbits), strict=False)
            if addr not in net:
                raise FixedAddressError(f"fixed address {addr} is outside the server network {net}")
            if addr == v6.server or addr == net.network_address:
                raise FixedAddressError(f"fixed address {addr} is reserved in {net}")
        if self._fixed_v6.get(addr, owner) != owner:
            raise FixedAddressError(f"fixed address {addr} is already given to another client")
        return self._holder_ok(self.handle_of_ipv6(addr), owner, str(addr))

    # ---- ifconfig-pool-persist ----------------------------------------------------------

    def load_persist(self, entries: list[PersistEntry], fixed: bool, now: float) -> list[str]:
        """Pre-assign persisted CNs to their old handles (entries stay free). `fixed`
        (persist interval 0) reserves them for that CN. Returns one warning per line that
        did not map into this pool, or whose address a later line gives another CN."""
        warnings: list[str] = []
        claimed: dict[int, str] = {}  # handle -> the CN an earlier line of this file gave it
        for pe in entries:
            h: int | None = None
            if pe.ipv4 is not None:
                h = self.handle_of_ipv4(pe.ipv4)
                if h is None:
                    warnings.append(
                        f"pool-persist: IPv4 {pe.ipv4} of {pe.common_name!r} is outside the pool"
                    )
            if pe.ipv6 is not None:
                h6 = self.handle_of_ipv6(pe.ipv6)
                if h6 is None:
                    warnings.append(
                        f"pool-persist: IPv6 {pe.ipv6} of {pe.common_name!r} is outside the pool"
                    )
                elif h is None:
                    h = h6
                elif h != h6:
                    warnings.append(
                        f"pool-persist: IPv4 and IPv6 of {pe.common_name!r} differ in slot; using IPv4"
                    )
            if h is None:
                continue
            e = self._entries[h]
            if e.in_use:
                warnings.append(
                    f"pool-persist: slot of {pe.common_name!r} is in use, entry ignored"
                )
                continue
            earlier = claimed.get(h)
            if earlier is not None and earlier != pe.common_name:
                v6 = self._v6_for(h)
                where = self.ipv4_base(h) if self.ipv4 is not None else v6.address if v6 is not None else h
                warnings.append(
                    f"pool-persist: {earlier!r} and {pe.common_name!r} both have {where}; "
                    f"{earlier!r} is dropped (the later line wins, as in OpenVPN)"
                )
            claimed[h] = pe.common_name
            e.last_release, e.fixed = now, fixed
            self._set_cn(h, pe.common_name)
            self._freed(h)
        return warnings

    def persist_entries(self) -> list[PersistEntry]:
        """Every handle with a remembered CN, in handle order (what the periodic write saves)."""
        out: list[PersistEntry] = []
        for h, e in enumerate(self._entries):
            if e.common_name is not None:
                v6 = self._v6_for(h)
                out.append(
                    PersistEntry(e.common_name, self.ipv4_base(h), v6.address if v6 else None)
                )
        return out


def pool_for_server(
    network: IPv4Network | None,
    topology: str,
    network6: IPv6Network | None = None,
) -> AddressPool:
    """The pool OpenVPN's `server N M` / `server-ipv6 P/n` helper builds.

    subnet: server N+1, pool N+2 .. broadcast-1 pushed with netmask M. net30: server
    N+1, pool N+4 .. broadcast-4 (broadcast for a /29), one /30 per client. IPv6: server
    P+1, pool from P+0x1000 (P+2 for /112 and longer)."""
    v4: IPv4Pool | None = None
    if network is not None:
        n, bcast = int(network.network_address), int(network.broadcast_address)
        if topology == "subnet":
            if network.prefixlen > 30:
                raise ConfigError(
                    f"server network {network} is too small for topology subnet (/30 at most)"
                )
            v4 = IPv4Pool(
                PoolType.INDIV,
                IPv4Address(n + 2),
                IPv4Address(bcast - 1),
                network.netmask,
                network,
                IPv4Address(n + 1),
            )
        elif topology == "net30":
            if network.prefixlen > 29:
                raise ConfigError(
                    f"server network {network} is too small for topology net30 (/29 at most)"
                )
            reserve = 0 if network.prefixlen == 29 else 4
            v4 = IPv4Pool(
                PoolType.NET30,
                IPv4Address(n + 4),
                IPv4Address(bcast - reserve),
                None,
                network,
                IPv4Address(n + 1),
            )
        else:
            raise ConfigError(f"topology {topology!r} has no server pool (subnet or net30)")
    v6: IPv6Pool | None = None
    if network6 is not None:
        p = int(network6.network_address)
        start = p + (2 if network6.prefixlen >= 112 else 0x1000)
        v6 = IPv6Pool(IPv6Address(start), network6.prefixlen, IPv6Address(p + 1))
    return AddressPool(v4, v6)
