"""The server's clients: one task each, in a nursery of their own under the server's.

A client's task runs its `ClientSession` with whatever moves its datagrams (the UDP
listener's writer loop, or networkio on its TCP connection). However the session ends —
EXIT, ping-restart, hand-window, a refused client, a transport error — only that task
ends: the error is logged, and the demux, the pool and the router forget the client. A
cancelled server cancels every client task with it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import field

import trio

from trivpn.records import dataclass
from trivpn.server.clientsession import ClientSession
from trivpn.server.demux import ServerDemux
from trivpn.server.hub import Hub
from trivpn.server.udp import UDPListener
from trivpn.workers.manager import primary_error

__all__ = ["GOODBYE_TIME", "ClientTable", "Listening"]

log = logging.getLogger("trivpn.server")

#: How long the goodbye packets get before the tree is cancelled.
GOODBYE_TIME = 0.3

IO = Callable[[], Awaitable[object]]


@dataclass(slots=True)
class Listening:
    """One listening socket (UDP: with its send queue), its demultiplexer (on TCP only
    max-clients and peer-ids) and the clients it created, by demux session."""

    demux: ServerDemux
    udp: UDPListener | None = None
    sessions: dict[int, ClientSession] = field(default_factory=dict)


class ClientTable:
    """Every live client, by the server-wide key the router uses."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.clients: dict[int, ClientSession] = {}
        self._nursery: trio.Nursery | None = None
        #: called when a client starts, becomes ready or ends (the library's `serve` watches)
        self.on_change: Callable[[], None] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the clients' nursery until the server is cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def start(self, sock: Listening, client: ClientSession, io: IO) -> None:
        sock.sessions[client.session] = self.clients[client.key] = client
        self.hub.clients[client.key] = client
        assert self._nursery is not None, "start clients once run() has started"
        self._nursery.start_soon(self._run, client, sock, io)
        client.on_ready = self._changed
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    async def _run(self, client: ClientSession, sock: Listening, io: IO) -> None:
        log.info("new session from %s (peer-id %d)", client.addr, client.peer_id)
        reason = "cancelled"
        try:
            await client.run(io)
        except Exception as exc:  # one client's end is never the server's
            reason = str(primary_error(exc))
        except BaseExceptionGroup as group:
            # A session that was ending (EXIT, ping-restart) when the server was cancelled:
            # only the cancellation may leave this task, never the session's own error.
            cancelled, rest = group.split(trio.Cancelled)
            if rest is not None:
                reason = str(primary_error(rest))
            if cancelled is not None:
                raise cancelled from None
        finally:
            sock.demux.remove_session(client.session)
            if sock.sessions.get(client.session) is client:
                del sock.sessions[client.session]
            self.clients.pop(client.key, None)
            self.hub.clients.pop(client.key, None)
            log.info("%r ended: %s", client, reason)
            await client.finish()  # cleanup, then client-disconnect / learn-address (bounded)
            if self.hub.observer is not None:
                self.hub.observer.client_gone(client)
            self._changed()

    async def goodbye(self) -> None:
        """Tell every ready client the server is going away, then give it a moment to leave."""
        for client in list(self.clients.values()):
            try:
                await client.say_goodbye()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        await trio.sleep(GOODBYE_TIME)
