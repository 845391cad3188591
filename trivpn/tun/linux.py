"""Kernel TUN device on Linux: creation (TUNSETIFF) and batched async packet I/O.

Theory of operation: the fd is non-blocking. `read_batch` parks in trio until the fd is
readable, then drains it with plain `os.read` calls until EAGAIN or `max_batch` packets, so
a burst costs one trio checkpoint instead of one per packet. `write_batch` writes each packet
and only parks when the kernel answers EAGAIN. One packet the kernel refuses is dropped and
counted; only a closed device is an error. The device is non-persistent: closing the fd
deletes the interface together with its addresses and the routes through it.

Write offload: `open_tun` asks for `IFF_VNET_HDR` (unless TRIVPN_TUN_GRO=0), and a device
opened so (`LinuxTun` asks the fd with TUNGETIFF, so an inherited fd works either way)
reads with the virtio header stripped and writes each batch through `gro.coalesce`:
consecutive TCP segments of one flow go to the kernel as one GSO write. Read offloads
(TUNSETOFFLOAD) stay off: the kernel hands us finished packets.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from collections.abc import Callable, Sequence

import trio

from trivpn.errors import ConfigError, TrivpnError
from trivpn.tun import gro
from trivpn.tun.base import DEFAULT_MAX_BATCH, DEFAULT_TUN_MTU, TUN_MAX_PACKET, TunDevice, TunStats

__all__ = ["LinuxTun", "TunDevice", "TunPermissionError", "open_tun"]

log = logging.getLogger("trivpn.tun")

TUN_CLONE_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)
TUNGETVNETHDRSZ = 0x800454D7  # _IOR('T', 215, int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
#: "0" turns the TUN write offload off (same-run benchmarks, a kernel that misbehaves)
TUN_GRO_ENV = "TRIVPN_TUN_GRO"
IFNAMSIZ = 16  # including the terminating NUL
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the union (40 bytes)
TUN_READ_SLACK = 256  # read a little more than the MTU so an odd larger packet is not cut

_PERMISSION_MESSAGE = (
    "creating a TUN device needs root (CAP_NET_ADMIN); try `trivpn ping` for a userspace tunnel"
)


class TunPermissionError(TrivpnError):
    """Raised instead of a bare PermissionError so the CLI can suggest the userspace tunnel."""


def gro_wanted() -> bool:
    """Whether new TUNs get the write offload (TRIVPN_TUN_GRO=0 turns it off; a value other
    than 0 or 1 is a `ConfigError`)."""
    value = os.environ.get(TUN_GRO_ENV, "1").strip()
    if value not in ("0", "1"):
        raise ConfigError(f"{TUN_GRO_ENV}={value!r}: expected 0 (no write offload) or 1")
    return value == "1"


def open_tun(name: str = "tvpn%d", *, vnet_hdr: bool | None = None) -> tuple[int, str]:
    """Create a TUN interface (IFF_TUN | IFF_NO_PI, non-blocking fd); return (fd, actual name).

    `%d` in `name` lets the kernel pick the first free number. `vnet_hdr` (default: on
    unless TRIVPN_TUN_GRO=0) adds IFF_VNET_HDR for the write offload; a kernel that refuses
    it gets a plain TUN.
    """
    if vnet_hdr is None:
        vnet_hdr = gro_wanted()
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
        flags = IFF_TUN | IFF_NO_PI
        try:
            wanted = flags | (IFF_VNET_HDR if vnet_hdr else 0)
            ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(encoded, wanted))
        except OSError as exc:
            if not vnet_hdr or exc.errno != errno.EINVAL:
                raise
            ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(encoded, flags))
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


def vnet_header_size(fd: int) -> int:
    """The virtio header length in front of every packet on this TUN fd: 0 without
    IFF_VNET_HDR (or if the fd is no TUN at all, e.g. a test's socket pair)."""
    try:
        flags = _IFREQ.unpack(fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size)))[1]
    except OSError:
        return 0
    if not flags & IFF_VNET_HDR:
        return 0
    try:
        size = struct.unpack("i", fcntl.ioctl(fd, TUNGETVNETHDRSZ, bytes(4)))[0]
    except OSError:
        size = gro.VNET_HDR_LEN
    return size if size >= gro.VNET_HDR_LEN else 0


def _raise_if_closed(exc: OSError) -> None:
    """A write that failed with EBADF found the device closed under it: the one write error
    that is not a dropped packet (shared by the plain and the merged write paths)."""
    if exc.errno == errno.EBADF:
        raise trio.ClosedResourceError("TUN device is closed") from None


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
        #: bytes of virtio header in front of each packet (0: a plain TUN, no write offload)
        self.vnet_hdr = vnet_header_size(fd)
        #: merge TCP segments into GSO writes (`tun.gro`); cleared if the kernel refuses one
        self.merge = True
        self._read_size = max(mtu, DEFAULT_TUN_MTU) + TUN_READ_SLACK + self.vnet_hdr
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
        vnet = self.vnet_hdr
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
            if vnet:
                if packet[1] or len(packet) <= vnet:  # a GSO packet: never asked for
                    self.stats.dropped_errors += 1
                    continue
                packet = packet[vnet:]
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
                    os.writev(self.fd, (bytes(self.vnet_hdr), reply))
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
        if self.vnet_hdr:
            return self._write_coalesced(packets, start)
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
                        _raise_if_closed(exc)
                        stats.dropped_errors += 1
                    else:
                        written += 1
                        nbytes += size
                i += 1
        finally:
            stats.packets_written += written
            stats.bytes_written += nbytes
        return i

    def _write_coalesced(self, packets: Sequence[bytes], start: int) -> int:
        """`write_nowait` on a TUN with a virtio header: one `writev` per `gro.coalesce` group.

        A merged write the kernel refuses (it never should) is not lost: its segments go
        again one by one, and this device stops merging (one warning)."""
        stats = self.stats
        todo = packets[start:] if start else packets
        kept = [p for p in todo if 0 < len(p) <= TUN_MAX_PACKET]
        writev = os.writev
        fd = self.fd
        zero = bytes(self.vnet_hdr)
        writes = (gro.coalesce(kept, self.vnet_hdr) if self.merge
                  else [([zero, p], 1, len(p)) for p in kept])
        done = 0  # of `kept`: written, or refused and counted
        written = nbytes = 0
        try:
            for buffers, count, size in writes:
                try:
                    writev(fd, buffers)
                except BlockingIOError:
                    break
                except OSError as exc:
                    _raise_if_closed(exc)
                    if count == 1:
                        stats.dropped_errors += 1
                        done += 1
                        continue
                    self.merge = False
                    log.warning("%s: the kernel refused a merged write (%s); writing packets "
                                "one by one from now on", self.name, exc.strerror)
                    for p in kept[done:done + count]:
                        try:
                            writev(fd, (zero, p))
                        except BlockingIOError:
                            break
                        except OSError:
                            stats.dropped_errors += 1
                        else:
                            written += 1
                            nbytes += len(p)
                        done += 1
                    else:
                        continue
                    break  # EAGAIN inside the group: the caller resumes at `done`
                else:
                    written += count
                    nbytes += size
                    if count > 1:
                        stats.gso_writes += 1
                        stats.gso_packets += count
                    done += count
        finally:
            stats.packets_written += written
            stats.bytes_written += nbytes
        if done == len(kept):  # the usual case: no second pass over the batch
            stats.dropped_oversize += len(todo) - len(kept)
            return len(packets)
        # EAGAIN: the caller's index of the first packet not handled; empty or oversize
        # packets before it are dropped and counted here, the ones after it when it resumes
        seen = 0
        for j in range(start, len(packets)):
            if 0 < len(packets[j]) <= TUN_MAX_PACKET:
                if seen == done:
                    return j
                seen += 1
            else:
                stats.dropped_oversize += 1
        return len(packets)

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
        s = self.stats
        log.debug("%s closed: %d packets read, %d written (%d of them in %d merged writes)",
                  self.name, s.packets_read, s.packets_written, s.gso_packets, s.gso_writes)
        try:
            trio.lowlevel.notify_closing(self.fd)
        except RuntimeError:  # not inside trio: nobody can be waiting
            pass
        os.close(self.fd)

    def __enter__(self) -> LinuxTun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
