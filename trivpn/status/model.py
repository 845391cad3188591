"""What a status report shows, as frozen values: the input of the pure formatters.

A server fills `ServerStatus` (its clients, its routing table, global counters); a client fills
`ClientStatus` (its byte counters). Times are POSIX seconds (time_t) handed in by the caller;
the formatters derive the text form from them, so one value can never disagree with the other.
Constructors check ranges and raise `StatusModelError`, so a formatter never meets a negative
byte count or a port that does not fit in 16 bits.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal

from trivpn.errors import TrivpnError
from trivpn.records import dataclass

#: Largest time_t accepted (9999-12-30): local time of any zone still fits in `datetime`.
MAX_TIME = 253_402_128_000
#: OpenVPN prints byte counters as unsigned 64-bit integers.
MAX_COUNTER = 2**64 - 1
#: Client and peer ids are printed unsigned; peer ids are 24 bits on the wire, but OpenVPN
#: keeps them in 32 bits, so the status file can show any 32-bit value.
MAX_ID = 2**32 - 1

VirtualAddress = IPv4Address | IPv6Address | IPv4Network | IPv6Network


class StatusModelError(TrivpnError, ValueError):
    """A status value out of range (negative counter, port beyond 65535, time past year 9999)."""


def _check_range(name: str, value: int, top: int) -> None:
    # bool is an int subclass; a True byte count is a caller bug, not a value.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise StatusModelError(f"{name} must be an integer in 0..{top}, not {value!r}")


def _check_text(name: str, value: str | None, *, optional: bool = True) -> None:
    if (value is None and optional) or isinstance(value, str):
        return
    kind = "a string or None" if optional else "a string"
    raise StatusModelError(f"{name} must be {kind}, not {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class RealAddress:
    """A client's transport address. `proto` is kept for reports that show it (OpenVPN 2.7
    prefixes `udp4:`); the 2.6 layout prints only host and port."""

    host: IPv4Address | IPv6Address
    port: int
    proto: Literal["udp", "tcp"] = "udp"

    def __post_init__(self) -> None:
        if not isinstance(self.host, IPv4Address | IPv6Address):
            raise StatusModelError(f"host must be an IP address, not {self.host!r}")
        _check_range("port", self.port, 65535)
        if self.proto not in ("udp", "tcp"):
            raise StatusModelError(f"proto must be 'udp' or 'tcp', not {self.proto!r}")


@dataclass(frozen=True, slots=True)
class ClientEntry:
    """One connected (or still authenticating) client of a server.

    `common_name` / `username` None print as `UNDEF`, as OpenVPN does for a client whose
    TLS handshake or authentication has not finished.
    """

    common_name: str | None
    real_address: RealAddress
    virtual_v4: IPv4Address | None
    virtual_v6: IPv6Address | None
    bytes_received: int
    bytes_sent: int
    connected_since: int
    username: str | None
    client_id: int
    peer_id: int
    cipher: str

    def __post_init__(self) -> None:
        _check_text("common_name", self.common_name)
        _check_text("username", self.username)
        _check_text("cipher", self.cipher, optional=False)
        if not isinstance(self.real_address, RealAddress):
            raise StatusModelError("real_address must be a RealAddress")
        if self.virtual_v4 is not None and not isinstance(self.virtual_v4, IPv4Address):
            raise StatusModelError(f"virtual_v4 must be an IPv4Address, not {self.virtual_v4!r}")
        if self.virtual_v6 is not None and not isinstance(self.virtual_v6, IPv6Address):
            raise StatusModelError(f"virtual_v6 must be an IPv6Address, not {self.virtual_v6!r}")
        _check_range("bytes_received", self.bytes_received, MAX_COUNTER)
        _check_range("bytes_sent", self.bytes_sent, MAX_COUNTER)
        _check_range("connected_since", self.connected_since, MAX_TIME)
        _check_range("client_id", self.client_id, MAX_ID)
        _check_range("peer_id", self.peer_id, MAX_ID)


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One line of the server's routing table.

    `virtual` is a host address (the client's pool address, printed bare) or a network
    (an `iroute`, always printed with its prefix length). `cached` marks a route the server
    learnt for a host inside an iroute network; OpenVPN flags it with a `C` suffix.
    """

    virtual: VirtualAddress
    common_name: str | None
    real_address: RealAddress
    last_ref: int
    cached: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.virtual, IPv4Address | IPv6Address | IPv4Network | IPv6Network):
            raise StatusModelError(f"virtual must be an address or network, not {self.virtual!r}")
        _check_text("common_name", self.common_name)
        if not isinstance(self.real_address, RealAddress):
            raise StatusModelError("real_address must be a RealAddress")
        _check_range("last_ref", self.last_ref, MAX_TIME)


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """A server's status at `time`: the input of `format_server_status`.

    `title` is the TITLE line of versions 2 and 3 (OpenVPN puts its version string there).
    """

    title: str
    time: int
    clients: tuple[ClientEntry, ...] = ()
    routes: tuple[RouteEntry, ...] = ()
    max_bcast_mcast_queue_length: int = 0
    dco_enabled: bool = False

    def __post_init__(self) -> None:
        _check_text("title", self.title, optional=False)
        _check_range("time", self.time, MAX_TIME)
        if not all(isinstance(c, ClientEntry) for c in self.clients):
            raise StatusModelError("clients must be ClientEntry values")
        if not all(isinstance(r, RouteEntry) for r in self.routes):
            raise StatusModelError("routes must be RouteEntry values")
        _check_range("max_bcast_mcast_queue_length", self.max_bcast_mcast_queue_length, 2**31 - 1)


@dataclass(frozen=True, slots=True)
class CompressionStats:
    """Byte counters around the compressor; OpenVPN lists them only with compression on."""

    pre_compress: int
    post_compress: int
    pre_decompress: int
    post_decompress: int

    def __post_init__(self) -> None:
        for name in ("pre_compress", "post_compress", "pre_decompress", "post_decompress"):
            _check_range(name, getattr(self, name), MAX_COUNTER)


@dataclass(frozen=True, slots=True)
class ClientStatus:
    """A client's (or p2p peer's) status at `time`: the input of `format_client_status`.

    tun_* count plaintext packets through the TUN device, link_* the datagrams/stream bytes on
    the transport (OpenVPN's "TCP/UDP" lines), auth_read the authenticated data-channel bytes.
    """

    time: int
    tun_read_bytes: int
    tun_write_bytes: int
    link_read_bytes: int
    link_write_bytes: int
    auth_read_bytes: int
    compression: CompressionStats | None = None

    def __post_init__(self) -> None:
        _check_range("time", self.time, MAX_TIME)
        for name in (
            "tun_read_bytes",
            "tun_write_bytes",
            "link_read_bytes",
            "link_write_bytes",
            "auth_read_bytes",
        ):
            _check_range(name, getattr(self, name), MAX_COUNTER)
        if self.compression is not None and not isinstance(self.compression, CompressionStats):
            raise StatusModelError("compression must be CompressionStats or None")
