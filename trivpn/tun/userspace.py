"""A TUN device that lives inside the process, for the library API and `trivpn ping`.

Theory of operation: two bounded trio memory channels stand in for the kernel. Packets the
application `send`s come out of the engine's `read_batch`; packets the engine writes with
`write_batch` come out of the application's `receive`. Like a real NIC queue, the engine
side never blocks on a slow application: when the application's queue is full the packet is
dropped and counted. The application side does block (backpressure) when the engine is slow.

Closing: `close()` ends both directions. The engine's `read_batch` then returns `[]` at once
(pending outbound packets are discarded, as with a kernel TUN) and `write_batch` raises
`trio.ClosedResourceError`. The application's `send` raises `trio.ClosedResourceError`;
`receive` still hands out packets already delivered, then raises `trio.EndOfChannel`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import trio

from trivpn.errors import ConfigError, LocalProtocolError
from trivpn.tun.base import DEFAULT_MAX_BATCH, DEFAULT_TUN_MTU, TUN_MAX_PACKET, TunStats

DEFAULT_QUEUE_SIZE = 256  # packets buffered per direction (a kernel TUN's txqueuelen is 500)


class UserspaceTun:
    """The same interface as LinuxTun but backed by trio memory channels: for the library API
    and `trivpn ping` (no root)."""

    def __init__(
        self,
        name: str = "usertun",
        *,
        mtu: int = DEFAULT_TUN_MTU,
        max_batch: int = DEFAULT_MAX_BATCH,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        if max_batch < 1 or queue_size < 1:
            raise ConfigError("max_batch and queue_size must be at least 1")
        self.name = name
        self.mtu = mtu
        self.max_batch = max_batch
        self.stats = TunStats()
        self._closed = False
        self._to_engine_send, self._to_engine_recv = trio.open_memory_channel[bytes](queue_size)
        self._to_app_send, self._to_app_recv = trio.open_memory_channel[bytes](queue_size)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- application side -------------------------------------------------------------------

    async def send(self, packet: bytes) -> None:
        """Inject one IP packet into the tunnel (as if the OS had routed it to the TUN)."""
        if not packet or len(packet) > self.mtu:
            raise LocalProtocolError(f"packet of {len(packet)} bytes does not fit MTU {self.mtu}")
        await self._to_engine_send.send(bytes(packet))

    async def receive(self) -> bytes:
        """Next packet that came out of the tunnel; EndOfChannel after close once drained."""
        return await self._to_app_recv.receive()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while True:
            try:
                yield await self.receive()
            except trio.EndOfChannel:
                return

    # -- engine side (TunDevice) ------------------------------------------------------------

    async def read_batch(self) -> list[bytes]:
        """Wait for at least one packet from the application; `[]` once closed."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return []
        try:
            first = await self._to_engine_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return []
        if self._closed:
            return []
        batch = [first]
        nbytes = len(first)
        receive_nowait = self._to_engine_recv.receive_nowait
        while len(batch) < self.max_batch:
            try:
                packet = receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            batch.append(packet)
            nbytes += len(packet)
        self.stats.packets_read += len(batch)
        self.stats.bytes_read += nbytes
        return batch

    async def write_batch(self, packets: Sequence[bytes]) -> None:
        """Hand packets to the application; a full queue drops (and counts) instead of blocking."""
        if self._closed:
            raise trio.ClosedResourceError("TUN device is closed")
        send_nowait = self._to_app_send.send_nowait
        stats = self.stats
        for packet in packets:
            size = len(packet)
            if size == 0 or size > TUN_MAX_PACKET:
                stats.dropped_oversize += 1
                continue
            try:
                send_nowait(packet)
            except trio.WouldBlock:
                stats.dropped_full += 1
            except trio.BrokenResourceError:  # cannot happen while open; keep the rule anyway
                stats.dropped_errors += 1
            else:
                stats.packets_written += 1
                stats.bytes_written += size
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """End both directions (see the module docstring for what each side sees). Idempotent."""
        if self._closed:
            return
        self._closed = True
        # Closing the send ends wakes a blocked receiver with EndOfChannel; closing the
        # engine's receive end wakes a blocked application `send` with ClosedResourceError.
        self._to_engine_send.close()
        self._to_engine_recv.close()
        self._to_app_send.close()
