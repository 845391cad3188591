"""Value types of the address pool: its configuration, errors, leases and pushed addresses.

Kept apart from the pool's logic (trivpn.server.pool, which re-exports them) so that
the config and push code can name them without the pool.
"""

from __future__ import annotations

import enum
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from trivpn.errors import ConfigError, TrivpnError
from trivpn.records import dataclass

__all__ = [
    "POOL_MAX",
    "FixedAddressError",
    "IPv4Pool",
    "IPv6Pool",
    "IfconfigIPv6Push",
    "IfconfigPush",
    "Lease",
    "PersistEntry",
    "PoolExhausted",
    "PoolType",
]

POOL_MAX = 65536  # the largest number of handles (OpenVPN's IFCONFIG_POOL_MAX)


class PoolExhausted(TrivpnError):
    """Every address of the pool is held by a live client: the newcomer is refused."""


class FixedAddressError(ConfigError):
    """A client-config-dir address cannot be given (outside the network, or in use)."""


class PoolType(enum.Enum):
    """IPv4 pool layout: one address per client, or one /30 per client."""

    INDIV = "indiv"
    NET30 = "net30"


@dataclass(frozen=True, slots=True)
class IPv4Pool:
    """The IPv4 side: the dynamic range [start, end] and what the clients are pushed.

    `network` is the server network (fixed addresses must lie in it); `server` is the
    server's own tunnel address, which no client may get."""

    type: PoolType
    start: IPv4Address
    end: IPv4Address
    netmask: IPv4Address | None = None
    network: IPv4Network | None = None
    server: IPv4Address | None = None


@dataclass(frozen=True, slots=True)
class IPv6Pool:
    """The IPv6 side: addresses base+i for handle i, pushed as `base+i/netbits server`."""

    base: IPv6Address
    netbits: int
    server: IPv6Address | None = None


@dataclass(frozen=True, slots=True)
class IfconfigPush:
    """`ifconfig A B`: B is the netmask (subnet) or the server end of the /30 (net30,
    `net30` true; it only decides the script environment's names)."""

    address: IPv4Address
    netmask_or_peer: IPv4Address
    net30: bool = False

    @property
    def option(self) -> str:
        return f"ifconfig {self.address} {self.netmask_or_peer}"


@dataclass(frozen=True, slots=True)
class IfconfigIPv6Push:
    """`ifconfig-ipv6 A/N S`: the client's address, prefix length and the server's."""

    address: IPv6Address
    netbits: int
    peer: IPv6Address | None

    @property
    def option(self) -> str:
        peer = f" {self.peer}" if self.peer is not None else ""
        return f"ifconfig-ipv6 {self.address}/{self.netbits}{peer}"


@dataclass(frozen=True, slots=True)
class Lease:
    """The addresses one client holds; `pushes()` is its per-client part of PUSH_REPLY."""

    lease_id: int
    common_name: str | None
    handle: int | None
    ipv4: IfconfigPush | None
    ipv6: IfconfigIPv6Push | None
    fixed_ipv4: bool = False
    fixed_ipv6: bool = False
    blocked: tuple[int, ...] = ()  # pool handles a fixed address inside the pool occupies

    @property
    def fixed(self) -> bool:
        return self.fixed_ipv4 or self.fixed_ipv6

    def pushes(self) -> list[IfconfigIPv6Push | IfconfigPush]:
        """In OpenVPN's order: `ifconfig-ipv6` before `ifconfig`."""
        out: list[IfconfigIPv6Push | IfconfigPush] = []
        if self.ipv6 is not None:
            out.append(self.ipv6)
        if self.ipv4 is not None:
            out.append(self.ipv4)
        return out

    def env(self) -> dict[str, str]:
        """The `ifconfig_pool_*` variables of the client-connect/disconnect scripts."""
        env: dict[str, str] = {}
        if self.ipv4 is not None:
            env["ifconfig_pool_remote_ip"] = str(self.ipv4.address)
            name = "ifconfig_pool_local_ip" if self.ipv4.net30 else "ifconfig_pool_netmask"
            env[name] = str(self.ipv4.netmask_or_peer)
        if self.ipv6 is not None:
            env["ifconfig_pool_remote_ip6"] = str(self.ipv6.address)
            if self.ipv6.peer is not None:
                env["ifconfig_pool_local_ip6"] = str(self.ipv6.peer)
            env["ifconfig_pool_ip6_netbits"] = str(self.ipv6.netbits)
        return env


@dataclass(frozen=True, slots=True)
class PersistEntry:
    """One `CN,IPv4,IPv6` line of an ifconfig-pool-persist file (IPv4: the /30 base for net30)."""

    common_name: str
    ipv4: IPv4Address | None
    ipv6: IPv6Address | None
