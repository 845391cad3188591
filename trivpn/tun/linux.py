"""Kernel TUN device on Linux: creation (TUNSETIFF) and batched async packet I/O.

Theory of operation: the fd is non-blocking. `read_batch` parks in trio until the fd is
readable, then drains it with plain `os.read` calls until EAGAIN or `max_batch` packets, so
a burst costs one trio checkpoint instead of one per packet. `write_batch` writes each packet
and only parks when the kernel answers EAGAIN. One packet the kernel refuses is dropped and
counted; only a closed device is an error. The device is non-persistent: closing the fd
deletes the interface together with its addresses and the routes through it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable, Sequence

import trio

from trivpn.errors import ConfigError, TrivpnError
from trivpn.tun.base import DEFAULT_MAX_BATCH, DEFAULT_TUN_MTU, TUN_MAX_PACKET, TunDevice, TunStats

__all__ = ["LinuxTun", "TunDevice", "TunPermissionError", "open_tun"]

TUN_CLONE_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16  # including the terminating NUL
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the union (40 bytes)
TUN_READ_SLACK = 256  # read a little more than the MTU so an odd larger packet is not cut

_PERMISSION_MESSAGE = (
    "creating a TUN device needs root (CAP_NET_ADMIN); try `trivpn ping` for a userspace tunnel"
)


class TunPermissionError(TrivpnError):
    """Raised instead of a bare PermissionError so the CLI can suggest the userspace tunnel."""


def open_tun(name: str = "tvpn%d") -> tuple[int, str]:
    """Create a TUN interface (IFF_TUN | IFF_NO_PI, non-blocking fd); return (fd, actual name).

    `%d` in `name` lets the kernel pick the first free number.
    """
    encoded = name.encode()
    if not encoded or len(encoded) >= IFNAMSIZ or b"/" in encoded or b"\0" in encoded:
        raise ConfigError(f"invalid TUN interface name {name!r} (1 to {IFNAMSIZ - 1} bytes)")
    try:
        fd = os.open(TUN_CLONE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        raise TunPermissionError(_PERMISSION_MESSAGE) from None
    except FileNotFoundError:
        raise ConfigError(f"{TUN_CLONE_DEVICE} is missing; load the tun kernel module") from None
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(encoded, IFF_TUN | IFF_NO_PI))
        os.set_blocking(fd, False)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise TunPermissionError(_PERMISSION_MESSAGE) from None
        if exc.errno == errno.EBUSY:
            raise ConfigError(f"interface {name!r} exists and is not a free TUN device") from None
        raise ConfigError(f"cannot create TUN device {name!r}: {exc.strerror}") from None
    actual = _IFREQ.unpack(ifr)[0].split(b"\0", 1)[0].decode()
    return fd, actual


class LinuxTun:
    """Async batch I/O over a TUN fd: read drains the fd without a checkpoint per packet."""

    def __init__(
        self, fd: int, name: str, *, mtu: int = DEFAULT_TUN_MTU, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        if max_batch < 1:
            raise ConfigError("max_batch must be at least 1")
        # Both data paths drain the fd until EAGAIN; an inherited fd (a manager's TUN) may
        # arrive blocking, and one blocking read would stall the loop or a data thread.
        os.set_blocking(fd, False)
        self.fd = fd
        self.name = name
        self.mtu = mtu
        self.max_batch = max_batch
        self.stats = TunStats()
        self._read_size = max(mtu, DEFAULT_TUN_MTU) + TUN_READ_SLACK
        self._closed = False
        #: block-ipv6: IPv6 packets read are answered with what this returns (ICMPv6
        #: "no route", or None for no answer) and never handed on; None: off
        self.ipv6_answer: Callable[[bytes], bytes | None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def read_nowait(self, limit: int = 0) -> list[bytes] | None:
        """Drain up to `limit` (default max_batch) packets without blocking; `None` once the
        device is closed.

        Shared by the trio reader below and the data-plane thread (`datachannel.fastpath`).
        """
        if self._closed:
            return None
        read = os.read
        fd = self.fd
        read_size = self._read_size
        max_batch = limit or self.max_batch
        batch: list[bytes] = []
        nbytes = 0
        while len(batch) < max_batch:
            try:
                packet = read(fd, read_size)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return None
                raise
            if not packet:  # only if the fd stopped being a TUN: treat as closed
                if not batch:
                    return None
                break
            batch.append(packet)
            nbytes += len(packet)
        if batch:
            self.stats.packets_read += len(batch)
            self.stats.bytes_read += nbytes
            if self.ipv6_answer is not None:
                return self._answer_ipv6(batch, self.ipv6_answer)
        return batch

    def _answer_ipv6(self, batch: list[bytes], answer: Callable[[bytes], bytes | None]) -> list[bytes]:
        """Keep the IPv4 packets; answer each IPv6 one locally (best effort, never blocks)."""
        kept: list[bytes] = []
        for packet in batch:
            if not packet or packet[0] >> 4 != 6:
                kept.append(packet)
                continue
            reply = answer(packet)
            if reply is not None:
                try:
                    os.write(self.fd, reply)
                except OSError:
                    self.stats.dropped_errors += 1
        return kept

    async def read_batch(self) -> list[bytes]:
        """Wait until readable, then read up to max_batch packets; `[]` once the device is closed."""
        while not self._closed:
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except trio.ClosedResourceError:
                return []
            batch = self.read_nowait()
            if batch is None:
                return []
            if batch:
                return batch
            # Spurious wakeup (another reader won the race): wait again.
        return []

    def write_nowait(self, packets: Sequence[bytes], start: int = 0) -> int:
        """Write `packets[start:]` until the kernel would block; return the first unwritten index.

        A packet the kernel refuses (other than EAGAIN) is dropped and counted.
        """
        if self._closed:
            raise trio.ClosedResourceError("TUN device is closed")
        write = os.write
        fd = self.fd
        stats = self.stats
        n = len(packets)
        i = start
        written = nbytes = 0
        try:
            while i < n:
                packet = packets[i]
                size = len(packet)
                if size == 0 or size > TUN_MAX_PACKET:
                    stats.dropped_oversize += 1
                else:
                    try:
                        write(fd, packet)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno == errno.EBADF:
                            raise trio.ClosedResourceError("TUN device is closed") from None
                        stats.dropped_errors += 1
                    else:
                        written += 1
                        nbytes += size
                i += 1
        finally:
            stats.packets_written += written
            stats.bytes_written += nbytes
        return i

    async def write_batch(self, packets: Sequence[bytes]) -> None:
        """Write every packet; drop and count the ones the kernel refuses."""
        n = len(packets)
        i = self.write_nowait(packets)
        if i >= n:
            await trio.lowlevel.checkpoint()
            return
        while i < n:
            await trio.lowlevel.wait_writable(self.fd)
            i = self.write_nowait(packets, i)

    def close(self) -> None:
        """Close the fd (which deletes the interface); wakes blocked readers/writers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            trio.lowlevel.notify_closing(self.fd)
        except RuntimeError:  # not inside trio: nobody can be waiting
            pass
        os.close(self.fd)

    def __enter__(self) -> LinuxTun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
