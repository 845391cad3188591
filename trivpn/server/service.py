"""`trivpn serve`: the server's root task tree.

    WorkersManager nursery (signals, cleanups: TUN, addresses, routes)
    ├── tun reader ──Hub.from_tun──▶ client.to_client          (per client, batched)
    ├── tun writer ◀──Hub.to_tun─── clients' decrypted packets (source-checked)
    ├── per UDP listener: receiver ──ServerDemux──▶ Reply / NewSession / Deliver
    │                     writer   ◀── every client's datagrams, to its current address
    └── clients nursery
        └── one task per client, its own cancel scope: the ClientSession's stack

A client's failure ends only its own task (logged; then the demux, pool and router forget
it); the server's failure or a signal cancels the whole tree. On SIGINT/SIGTERM the exit
hook first tells every client the server is going away (RESTART, or OCC exit without
cc-exit), waits a moment for those packets to leave, and then everything is cancelled and
the cleanups remove the TUN with its addresses and routes.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from trivpn.networkio import run_networkio
from trivpn.networkio.transport import Endpoint, TCPTransport
from trivpn.packetmuxer import PacketMuxer
from trivpn.server.clientsession import ClientSession
from trivpn.server.config_model import ServerConfig
from trivpn.server.demux import Deliver, NewSession, Reply, ServerDemux, random_cookie_key
from trivpn.server.hub import Hub
from trivpn.server.sessionparts import SessionParts, session_parts
from trivpn.server.sockets import accept, bind_listener
from trivpn.server.support import check_served
from trivpn.server.tun import TunFactory, open_server_tun, run_tun_reader, run_tun_writer
from trivpn.server.udp import UDPListener
from trivpn.session.stack import DATA_CHANNEL_SIZE
from trivpn.workers.manager import WorkersManager, primary_error

__all__ = ["Server"]

log = logging.getLogger("trivpn.server")

#: How long the goodbye packets get before the tree is cancelled.
GOODBYE_TIME = 0.3


@dataclass(slots=True)
class _Socket:
    """One listening socket (UDP: with its send queue), its demultiplexer (on TCP only
    max-clients and peer-ids) and the clients it created."""

    demux: ServerDemux
    udp: UDPListener | None = None
    sessions: dict[int, ClientSession] = field(default_factory=dict)


def new_session_id() -> bytes:
    """A random, non-zero session id (TCP sessions make their own; UDP's is the cookie)."""
    while not any(sid := secrets.token_bytes(8)):
        pass
    return sid


class Server:
    """Everything `trivpn serve` runs (see the module docstring)."""

    def __init__(
        self, config: ServerConfig, *, handle_signals: bool = False, tun_factory: TunFactory = open_server_tun
    ) -> None:
        #: ignored options (one-line warnings); the unsafe ones raised ConfigError here
        self.warnings = check_served(config)
        self.config = config
        self.parts: SessionParts = session_parts(config)
        self.manager = WorkersManager(handle_signals=handle_signals, exit_grace=GOODBYE_TIME + 0.7)
        self._tun_s, self._tun_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE * 4)
        self.hub = Hub(config, self._tun_s)
        self.clients: dict[int, ClientSession] = {}
        self.tun_name: str | None = None
        self._clients_nursery: trio.Nursery | None = None
        self._tun_factory = tun_factory
        #: the bound (host, port) of every listener, once `run` has started
        self.addresses: list[tuple[str, int]] = []

    def request_stop(self, reason: str = "stop requested") -> None:
        self.manager.request_stop(reason)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def setup(m: WorkersManager) -> None:
            tun = self._tun_factory(self.config, m.add_cleanup)
            self.tun_name = tun.name
            m.start_service("tun-reader", run_tun_reader, tun, self.hub)
            m.start_service("tun-writer", run_tun_writer, tun, self._tun_r)
            m.add_exit_hook(self._goodbye)
            for listener in self.config.listeners:
                raw = bind_listener(listener)
                m.add_cleanup(raw.close)
                host, port = raw.getsockname()[:2]
                self.addresses.append((host, port))
                demux = ServerDemux(self.parts.wrap_factory, cookie_key=random_cookie_key(),
                                    config=self.config.demux_config())
                name = f"{listener.proto} {host}:{port}"
                if listener.proto == "tcp":
                    m.start_service(f"{name} acceptor", self._accept, raw, _Socket(demux))
                else:
                    udp = UDPListener(raw)
                    m.start_service(f"{name} writer", udp.run_writer)
                    m.start_service(f"{name} receiver", self._receive, _Socket(demux, udp))
                log.info("listening on %s", name)
            assert m.nursery is not None
            self._clients_nursery = await m.nursery.start(self._hold_clients)
            log.info("Initialization Sequence Completed")
            task_status.started()

        await self.manager.run(setup)

    async def _hold_clients(self, *, task_status: trio.TaskStatus[trio.Nursery]) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await trio.sleep_forever()

    async def _receive(self, sock: _Socket) -> None:
        udp, demux = sock.udp, sock.demux
        assert udp is not None
        while True:
            batch = await udp.receive_batch()
            for action in demux.receive_datagrams(batch, trio.current_time()):
                if isinstance(action, Deliver):
                    client = sock.sessions.get(action.session)
                    if client is not None:
                        client.deliver(action.datagrams)
                elif isinstance(action, Reply):
                    udp.send_nowait(action.addr, [action.datagram])  # type: ignore[arg-type]  # Address is (host, port) here
                elif isinstance(action, NewSession):
                    self._start_udp_client(sock, udp, action)

    def _start_udp_client(self, sock: _Socket, udp: UDPListener, new: NewSession) -> None:
        if new.replaces is not None and (old := sock.sessions.get(new.replaces)) is not None:
            old.cancel_scope.cancel()  # a client restarted on the same address
        client = ClientSession.after_cookie(self.hub.new_key(), new, self.parts, self.hub)

        async def writer() -> None:  # to the client's current address (the demux knows it)
            async for batch in client.net_down:
                info = sock.demux.session_info(client.session)
                if info is not None:
                    udp.send_nowait(info[1], batch)  # type: ignore[arg-type]  # (host, port)

        self._start(sock, client, writer)

    async def _accept(self, raw: socket.socket, sock: _Socket) -> None:
        """TCP: one session per connection, no cookie (the handshake proved the address)."""
        while True:
            conn, addr = await accept(raw)
            admitted = sock.demux.add_stream_session(addr)
            if admitted is None:
                log.warning("refusing TCP client %s:%s: max-clients or shutting down", *addr)
                conn.close()
                continue
            session, peer_id = admitted
            muxer = PacketMuxer(self.parts.wrap_factory(1), new_session_id(), is_server=True)
            client = ClientSession(self.hub.new_key(), session, peer_id, addr, muxer, self.parts, self.hub, proto="tcp")
            endpoint = Endpoint(addr[0], addr[1], "tcp", conn.family, addr)
            self._start(sock, client, partial(run_networkio, TCPTransport(conn, endpoint), client.net_up, client.net_down))

    def _start(self, sock: _Socket, client: ClientSession, io: Callable[[], Awaitable[object]]) -> None:
        sock.sessions[client.session] = self.clients[client.key] = client
        self.hub.clients[client.key] = client
        assert self._clients_nursery is not None
        self._clients_nursery.start_soon(self._run_client, client, sock, io)

    async def _run_client(self, client: ClientSession, sock: _Socket, io: Callable[[], Awaitable[object]]) -> None:
        log.info("new session from %s (peer-id %d)", client.addr, client.peer_id)
        reason = "cancelled"
        try:
            await client.run(io)
        except Exception as exc:  # one client's end is never the server's
            reason = str(primary_error(exc))
        finally:
            sock.demux.remove_session(client.session)
            if sock.sessions.get(client.session) is client:
                del sock.sessions[client.session]
            self.clients.pop(client.key, None)
            self.hub.clients.pop(client.key, None)
            client.cleanup(trio.current_time())
            log.info("%r ended: %s", client, reason)

    async def _goodbye(self) -> None:
        for client in list(self.clients.values()):
            try:
                await client.say_goodbye()
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        await trio.sleep(GOODBYE_TIME)
