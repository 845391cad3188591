"""`trivpn serve`: the server's root task tree.

    WorkersManager nursery (signals, cleanups: TUN, addresses, routes)
    ├── tun reader ──Hub.from_tun──▶ client.to_client          (per client, batched)
    ├── tun writer ◀──Hub.to_tun─── clients' decrypted packets (source-checked)
    ├── per UDP listener: receiver ──ServerDemux──▶ Reply / NewSession / Deliver
    │                     writer   ◀── every client's datagrams, to its current address
    ├── per TCP listener: acceptor (tcp.py: one session per connection, over networkio)
    ├── status file writer (statustask.py)
    └── clients nursery (clients.py)
        └── one task per client, its own cancel scope: the ClientSession's stack

A client's failure ends only its own task (logged; then the demux, pool and router forget
it); the server's failure or a signal cancels the whole tree. On SIGINT/SIGTERM (and
SIGHUP/SIGUSR1) the exit hook first tells every client the server is going away (RESTART,
or OCC exit without cc-exit), waits a moment for those packets to leave, and then
everything is cancelled and the cleanups remove the TUN with its addresses and routes.
`trivpn serve` builds its Server with `restarts=True` and starts a new one after a
SIGHUP/SIGUSR1 stop (restart.py): a restart is a new Server, nothing of the old one is
reused, so this class never restarts itself. SIGUSR2 logs the status report. The workers
manager listens for all of them before anything is set up (a SIGUSR2 once only the status
listener at the end of the set-up caught it, and killed the server half set up), and the
management interface's `signal` goes through the same `WorkersManager.handle_signal`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterable
from typing import Any

import trio

from trivpn.server.clients import GOODBYE_TIME, ClientTable, Listening
from trivpn.server.clientsession import ClientSession
from trivpn.server.config_model import ServerConfig
from trivpn.server.demux import (
    ConnectFreq,
    Deliver,
    NewSession,
    Reply,
    ResetRateLimit,
    ServerDemux,
    SessionSlots,
    random_cookie_key,
)
from trivpn.server.hub import Hub
from trivpn.server.persist import start_pool_persist
from trivpn.server.privdrop import PrivilegeDrop
from trivpn.server.restart import restart_notes
from trivpn.server.sessionparts import SessionParts, session_parts
from trivpn.server.sockets import bind_listener
from trivpn.server.statustask import STATUS_FILE_MODE, log_status, run_status_file
from trivpn.server.support import check_served
from trivpn.server.tcp import run_tcp_acceptor
from trivpn.server.tun import TunFactory, TunSink, open_server_tun, run_tun_reader
from trivpn.server.udp import UDPListener
from trivpn.server.udpdeliver import deliver_udp
from trivpn.session.stack import DATA_CHANNEL_SIZE
from trivpn.status.writer import write_status_file
from trivpn.workers.manager import WorkersManager

__all__ = ["Server"]

log = logging.getLogger("trivpn.server")

#: A Server run by itself (the `trivpn.serve` API, whose application decides what comes
#: next) stops gracefully on SIGHUP/SIGUSR1 — clients told, leases and the management
#: socket handled — instead of the default action killing it with none of that done.
#: `trivpn serve` restarts on them instead (restart.py).
NO_RELOAD_SIGNALS = {
    sig: "shutting down (a server run through the API does not restart by itself)"
    for sig in (signal.SIGHUP, signal.SIGUSR1)
}

class Server:
    """Everything `trivpn serve` runs (see the module docstring)."""

    def __init__(
        self, config: ServerConfig, *, handle_signals: bool = False, tun_factory: TunFactory = open_server_tun,
        metrics_addr: tuple[str, int] | None = None, kept_signals: Callable[[], Iterable[int]] | None = None,
        restarts: bool = False,
    ) -> None:
        """`kept_signals`: signals that came before the server ran (cli_common.StartupSignals).
        `restarts`: the caller starts a new Server after a SIGHUP/SIGUSR1 stop (restart.py),
        so they log that the process restarts rather than that it stops for good."""
        #: ignored options (one-line warnings); the unsafe ones raised ConfigError here
        self.warnings = check_served(config)
        self.config = config
        self.parts: SessionParts = session_parts(config)
        self._tun_sink = TunSink(DATA_CHANNEL_SIZE * 4)
        self.hub = Hub(config, self._tun_sink)
        self.table = ClientTable(self.hub)
        self.manager = WorkersManager(
            handle_signals=handle_signals, exit_grace=GOODBYE_TIME + 0.7,
            also_stop_on=restart_notes() if restarts else NO_RELOAD_SIGNALS,
            also_handle={signal.SIGUSR2: self.log_status}, kept_signals=kept_signals,
        )
        #: every live client by its server-wide key
        self.clients = self.table.clients
        self.tun_name: str | None = None
        self._tun_factory = tun_factory
        #: the bound (host, port) of every listener, once `run` has started
        self.addresses: list[tuple[str, int]] = []
        self.metrics_addr = metrics_addr
        #: the management host (trivpn.observe.server.ServerMonitor) once running, if configured
        self.monitor: Any = None
        #: user/group: dropped once the TUN and listeners are up (privdrop.py)
        self.privileges = PrivilegeDrop(config.user, config.group)
        self._restarts = restarts

    def request_stop(self, reason: str = "stop requested") -> None:
        self.manager.request_stop(reason)

    def log_status(self) -> None:
        """SIGUSR2: the status report to the log, in the configured status-version."""
        log_status(self.clients, self.hub, self.config.status.version if self.config.status else 1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def setup(m: WorkersManager) -> None:
            m.add_cleanup(self.privileges.close)  # the oldest cleanup: runs after the last writes
            tun = self._tun_factory(self.config, m.add_cleanup)
            self.tun_name = tun.name
            self.parts.scripts.opened(tun.name)
            m.start_service("tun-reader", run_tun_reader, tun, self.hub)
            m.start_service("tun-writer", self._tun_sink.run, tun)
            m.add_exit_hook(self.table.goodbye)
            if (persist := self.config.pool_persist) is not None:
                kept = self.privileges.keep(persist.path, 0o600) if persist.seconds else None
                start_pool_persist(m, self.hub.pool, persist, kept.replace if kept else None)
            # max-clients, connect-freq-initial and connect-freq are the server's limits, not per socket
            slots = SessionSlots(self.config.max_clients)
            freq = self.config.demux_config()
            reset_rate = ResetRateLimit(freq.connect_freq_initial, freq.connect_freq_initial_period)
            new_rate = ConnectFreq(freq.connect_freq, freq.connect_freq_period)
            for listener in self.config.listeners:
                raw = bind_listener(listener)
                m.add_cleanup(raw.close)
                host, port = raw.getsockname()[:2]
                self.addresses.append((host, port))
                demux = ServerDemux(self.parts.wrap_factory, cookie_key=random_cookie_key(),
                                    config=self.config.demux_config(), tls_crypt_v2=self.parts.tls_crypt_v2,
                                    slots=slots, reset_rate=reset_rate, connect_freq=new_rate)
                name = f"{listener.proto} {host}:{port}"
                if listener.proto == "tcp":
                    m.start_service(f"{name} acceptor", run_tcp_acceptor, raw, Listening(demux), self.table,
                                    self.parts, self.hub)
                else:
                    udp = UDPListener(raw)
                    m.start_service(f"{name} writer", udp.run_writer)
                    m.start_service(f"{name} receiver", self._receive, Listening(demux, udp))
                log.info("listening on %s", name)
            assert m.nursery is not None
            await m.nursery.start(self.table.run)
            if self.config.management is not None or self.metrics_addr is not None:
                # bound before the privileges go: a unix socket or a low port may need root
                from trivpn.observe.serverrun import start_observing

                self.monitor = await start_observing(self, m.nursery, self.metrics_addr)
            status = self.config.status
            kept_status = self.privileges.keep(status.path, STATUS_FILE_MODE) if status is not None else None
            self.privileges.drop()  # user/group: the TUN and the listeners are up
            if self._restarts and (user := self.privileges.root_given_up) is not None:
                m.also_stop_on.update(restart_notes(user))  # no restart from here on: say so at once
            if status is not None:
                m.start_service("status file", run_status_file, status, self.clients, self.hub,
                                kept_status.write if kept_status else write_status_file)
            log.info("Initialization Sequence Completed")
            task_status.started()

        await self.manager.run(setup)

    async def _receive(self, sock: Listening) -> None:
        udp, demux = sock.udp, sock.demux
        assert udp is not None
        while True:
            batch = await udp.receive_batch()
            now = trio.current_time()
            for action in demux.receive_datagrams(batch, now):
                if isinstance(action, Deliver):
                    deliver_udp(sock, action, now)  # and float the client when the packet is authentic
                elif isinstance(action, Reply):
                    udp.send_nowait(action.addr, [action.datagram])  # type: ignore[arg-type]  # Address is (host, port) here
                elif isinstance(action, NewSession):
                    self._start_udp_client(sock, udp, action)

    def _start_udp_client(self, sock: Listening, udp: UDPListener, new: NewSession) -> None:
        if new.replaces is not None and (old := sock.sessions.get(new.replaces)) is not None:
            old.cancel_scope.cancel()  # a client restarted on the same address
        client = ClientSession.after_cookie(self.hub.new_key(), new, self.parts, self.hub)

        def send(batch: list[bytes]) -> None:  # to the client's current address (the demux knows it)
            info = sock.demux.session_info(client.session)
            if info is not None:
                client.addr = info[1]  # type: ignore[assignment]  # follows a float; (host, port) here
                udp.send_nowait(info[1], batch)  # type: ignore[arg-type]  # (host, port)

        async def writer() -> None:
            async for batch in client.net_down:
                send(batch)

        client.send_direct = send  # keyed data packets from the hub skip the stack

        self.table.start(sock, client, writer)
