"""Trio service for the management interface: listeners, one task per connection, broadcast.

Each connection runs a `ManagementConnection` core; a reader feeds it the client's bytes, a
notifier feeds it broadcast notifications and bytecount timers. Notifications reach a
connection through a bounded channel: a client that stops reading fills it and is dropped
(counted in `slow_dropped`), so it cannot make the daemon buffer without limit. A failing
connection is logged and closed; it never reaches the host's nursery.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable

import trio

from trivpn.management import config, core
from trivpn.management.core import MAX_LINE_BYTES, ManagementConnection, Notification

log = logging.getLogger(__name__)
_Flush = Callable[[], Awaitable[None]]


class ManagementService:
    """Serve the management protocol for `host` on TCP and/or unix-socket listeners."""

    def __init__(
        self, host: core.ManagementHost, *, password: str | None = None,
        queue_size: int = 256, max_connections: int = 16,
    ) -> None:
        self._host = host
        self._password = password
        self._queue_size = queue_size
        self._max_connections = max_connections
        self._connections: dict[trio.MemorySendChannel[list[Notification]], trio.CancelScope] = {}
        self.slow_dropped = 0  #: connections closed because their queue overflowed
        self.refused = 0  #: connections refused over max_connections
        self.failed = 0  #: connections that ended with an unexpected error

    def broadcast(self, notifications: list[Notification]) -> None:
        """Queue `notifications` for every connection (never blocks; drops slow readers)."""
        for channel, scope in list(self._connections.items()):
            try:
                channel.send_nowait(notifications)
            except trio.WouldBlock:
                self.slow_dropped += 1
                del self._connections[channel]
                scope.cancel()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def serve_tcp(
        self, port: int, address: str = "127.0.0.1",
        *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if not config.is_loopback(address) and self._password is None:
            raise config.ManagementConfigError(
                f"management: listening on non-loopback address {address} needs a password file"
            )
        await trio.serve_tcp(self.handle_stream, port, host=address, task_status=task_status)

    async def serve_unix(
        self, path: str,
        *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listener = await config.open_unix_listener(path)
        try:
            await trio.serve_listeners(self.handle_stream, [listener], task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            try:
                config.remove_socket_file(path)
            except OSError as exc:  # e.g. a root-owned directory after `user nobody`: not fatal
                log.warning("management: cannot remove the unix socket %s: %s", path, exc.strerror or exc)

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Run one management connection until quit, EOF, overflow or error."""
        if len(self._connections) >= self._max_connections:
            self.refused += 1
            await trio.aclose_forcefully(stream)
            return
        conn = ManagementConnection(self._host, password=self._password)
        send, receive = trio.open_memory_channel[list[Notification]](self._queue_size)
        lock = trio.Lock()

        async def flush() -> None:
            data = conn.data_to_send()
            if data:
                async with lock:
                    await stream.send_all(data)

        try:
            with trio.CancelScope() as scope:
                self._connections[send] = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._notifier, conn, receive, flush)
                    await self._reader(conn, stream, flush, send)
                    nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            log.debug("management connection closed by the peer")
        except* Exception:
            self.failed += 1
            log.warning("management connection failed", exc_info=True)
        finally:
            self._connections.pop(send, None)
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _reader(
        conn: ManagementConnection, stream: trio.abc.Stream, flush: _Flush,
        wake: trio.MemorySendChannel[list[Notification]],
    ) -> None:
        await flush()
        while not conn.closed:
            data = b""
            if conn.wants_data:
                data = bytes(await stream.receive_some(MAX_LINE_BYTES))
                if not data:
                    return
            timer = conn.get_timer()
            conn.receive_data(data, trio.current_time())
            if conn.get_timer() != timer:  # wake the notifier to re-arm the bytecount timer
                with contextlib.suppress(trio.WouldBlock):
                    wake.send_nowait([])
            await flush()

    @staticmethod
    async def _notifier(
        conn: ManagementConnection,
        receive: trio.MemoryReceiveChannel[list[Notification]], flush: _Flush,
    ) -> None:
        while True:
            timer = conn.get_timer()
            with trio.move_on_at(math.inf if timer is None else timer):
                for notification in await receive.receive():
                    conn.notify(notification)
            conn.handle_timer(trio.current_time())
            await flush()
