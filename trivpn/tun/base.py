"""The interface shared by the kernel TUN and the userspace TUN.

The engine's TUN service only ever calls `read_batch`/`write_batch`/`close`, so the data path
does not care whether packets come from the kernel or from an in-process application.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from trivpn.records import dataclass

DEFAULT_TUN_MTU = 1500  # OpenVPN's tun-mtu default
DEFAULT_MAX_BATCH = 64
TUN_MAX_PACKET = 65535  # largest IP packet; anything above cannot be valid


@dataclass(slots=True)
class TunStats:
    """Counters kept by a device; updated per batch, never logged per packet."""

    packets_read: int = 0
    bytes_read: int = 0
    packets_written: int = 0
    bytes_written: int = 0
    dropped_oversize: int = 0  # empty or larger than TUN_MAX_PACKET, refused before writing
    dropped_errors: int = 0  # the device refused the packet (EINVAL, EIO, ...)
    dropped_full: int = 0  # userspace only: the application did not keep up
    gso_writes: int = 0  # writes that carried several TCP segments at once (`tun.gro`)
    gso_packets: int = 0  # the packets those writes carried


@runtime_checkable
class TunDevice(Protocol):
    """What the engine needs from a TUN device."""

    name: str
    mtu: int
    stats: TunStats

    async def read_batch(self) -> list[bytes]:
        """Wait for at least one packet; return up to max_batch. `[]` means the device is closed."""
        ...

    async def write_batch(self, packets: Sequence[bytes]) -> None:
        """Deliver packets; a single bad packet is dropped and counted, never raised."""
        ...

    def close(self) -> None:
        """Release the device; idempotent."""
        ...
