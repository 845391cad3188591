"""`trivpn connect` as the management interface sees it: the client's `ManagementHost`.

`ClientMonitor` is both ends of the glue: the client run calls it as its `ClientObserver`
(states, sessions, hold, AUTH_FAILED), and the management core calls it as its host (state
and log history, status, byte counts, signal/hold/username/password/auth-retry). It keeps
bounded histories and forwards real-time lines to `notify` (the management service's
broadcast, or nothing without one). Acting on a command means calling the engine: a restart
for SIGUSR1/SIGHUP, a graceful stop for SIGTERM, the status report to the log for SIGUSR2.

States follow OpenVPN's client names: CONNECTING when an attempt starts, WAIT once the
transport is open, ASSIGN_IP / ADD_ROUTES / CONNECTED when the tunnel is up, RECONNECTING
with the reason before the next attempt, EXITING at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import trio

from trivpn import __version__
from trivpn.management import commands as c
from trivpn.management import formats as f
from trivpn.management.core import ByteCounts, Notification, Reply
from trivpn.observe.figures import KeyClock, SessionFigures, current_key_id, figures_of
from trivpn.status.format import format_client_status
from trivpn.status.model import ClientStatus

__all__ = ["HISTORY", "ClientMonitor", "LogCapture", "reason_word"]

log = logging.getLogger("trivpn")

#: entries of state and log history kept (OpenVPN keeps a fixed-size ring buffer too)
HISTORY = 256
VERSION_TITLE = f"OpenVPN 2.6.14 trivpn-{__version__} [trio]"
_FLAGS = {logging.DEBUG: "D", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "N"}


def reason_word(text: str) -> str:
    """The one-word RECONNECTING reason OpenVPN tools expect, from our longer message."""
    if text.startswith("SIG"):
        return text.split()[0]
    for word in ("ping-restart", "auth-failure", "tls-error"):
        if word in text:
            return word
    if "AUTH_FAILED" in text:
        return "auth-failure"
    if "RESTART" in text or "restart" in text:
        return "server-pushed-connection-reset"
    return "connection-reset"


class LogCapture(logging.Handler):
    """Log records into the monitor's history (and `>LOG:` lines), from any thread."""

    def __init__(self, monitor: ClientMonitor | Any, token: trio.lowlevel.TrioToken) -> None:
        super().__init__(logging.DEBUG)
        self._monitor = monitor
        self._token = token

    def emit(self, record: logging.LogRecord) -> None:
        flags = _FLAGS.get(record.levelno, "F" if record.levelno >= logging.CRITICAL else "")
        entry = f.LogRecord(int(record.created), flags, record.getMessage())
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a data-plane thread: hand it to the trio thread
            try:
                self._token.run_sync_soon(self._monitor.add_log, entry)
            except trio.RunFinishedError:
                pass
            return
        self._monitor.add_log(entry)


class HostHistory:
    """What every management host answers alike: its title, pid, and the state and log
    history it keeps (`states`, `logs`); no `echo` lines are kept."""

    states: deque[f.StateRecord]
    logs: deque[f.LogRecord]

    def version_title(self) -> str:
        return VERSION_TITLE

    def pid(self) -> int:
        return os.getpid()

    def state_history(self) -> Sequence[f.StateRecord]:
        return self.states

    def log_history(self) -> Sequence[f.LogRecord]:
        return self.logs

    def echo_history(self) -> Sequence[f.LogRecord]:
        return ()


class ClientMonitor(HostHistory):
    """The client's management host and observer (see the module docstring)."""

    is_server = False

    def __init__(
        self, *, hold: bool = False, query_passwords: bool = False, auth_retry: str = "none",
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.wall = wall
        self.states: deque[f.StateRecord] = deque(maxlen=HISTORY)
        self.logs: deque[f.LogRecord] = deque(maxlen=HISTORY)
        #: where real-time lines go (the management service's broadcast)
        self.notify: Callable[[list[Notification]], None] = lambda _: None
        #: what the commands act on; set by the runner before the engine starts
        self.engine: Any = None
        self.nursery: trio.Nursery | None = None
        self.hold_flag = hold
        self._holding: int | None = None
        self._released = trio.Event()
        self.query_passwords = query_passwords
        self.auth_retry = auth_retry
        self._need_credentials = False
        self._given: dict[str, str] = {}
        self._credentials = trio.Event()
        self._asking = False
        self.session: Any = None
        self.info: Any = None
        self.session_opened_at: float | None = None
        self.handshake_seconds: float | None = None
        self.key_clock = KeyClock()
        #: set once the management socket, status file and metrics are in place
        self.ready = trio.Event()
        #: called with the seconds every finished first key exchange took (metrics)
        self.on_handshake: Callable[[float], None] = lambda _: None
        self.add_state("CONNECTING")

    # -- observer side (called by the client run) ----------------------------------------

    def add_state(self, name: str, description: str = "", **fields: str) -> None:
        record = f.StateRecord(int(self.wall()), name, description, **fields)
        self.states.append(record)
        self.notify([Notification.state(record)])

    def add_log(self, record: f.LogRecord) -> None:
        self.logs.append(record)
        self.notify([Notification.log(record)])

    def state(self, name: str, description: str = "") -> None:
        if name == "RECONNECTING":
            description = reason_word(description)
        if name == "CONNECTING" and self.states and self.states[-1].name == "CONNECTING":
            return  # the initial entry already says so
        self.add_state(name, description)

    async def hold(self, delay: float) -> None:
        if self.hold_flag:
            self._holding = int(delay)
            self._released = trio.Event()
            self.notify([Notification.always(f.hold(int(delay)))])
            log.info("management: waiting for hold release")
            await self._released.wait()
        if self._need_credentials:
            await self._query_credentials()

    async def _query_credentials(self) -> None:
        self._given, self._credentials = {}, trio.Event()
        self._asking = True
        self.notify([Notification.always(f.password_needed("Auth"))])
        await self._credentials.wait()
        self._need_credentials = self._asking = False
        client = self.engine.client
        client.config = dataclasses.replace(
            client.config, username=self._given["username"], password=self._given["password"]
        )

    def need_credentials(self, needed: bool) -> None:
        """The profile's auth-user-pass has no file: ask the management client before connecting."""
        self._need_credentials = needed and self.query_passwords

    def session_open(self, session: Any) -> None:
        self.session, self.info = session, None
        self.session_opened_at = trio.current_time()
        self.key_clock = KeyClock()

    def session_up(self, session: Any, info: Any) -> None:
        self.info = info
        # the key's age and `trivpn status`'s last handshake count from now, not the first read
        self.key_clock.observe(current_key_id(session.stack), self.wall())
        if self.session_opened_at is not None:
            self.handshake_seconds = trio.current_time() - self.session_opened_at
            self.on_handshake(self.handshake_seconds)
        remote_ip, remote_port = self._remote()
        v4, v6 = self._tunnel_addresses()
        self.add_state("ASSIGN_IP", "", local_ip=v4, local_ipv6=v6)
        if info.tun_config is not None and (info.tun_config.routes or info.tun_config.routes6):
            self.add_state("ADD_ROUTES")
        self.add_state(
            "CONNECTED", "SUCCESS", local_ip=v4, remote_ip=remote_ip, remote_port=remote_port,
            local_ipv6=v6,
        )

    def session_closed(self, session: Any, reason: str) -> None:
        if self.session is session:
            self.session = None

    async def auth_failed(self, client: Any, reason: str) -> bool:
        if self.query_passwords:
            self.notify([Notification.always(f.password_failed("Auth"))])
        if self.auth_retry == "interact" and self.query_passwords:
            self._need_credentials = True
        return self.auth_retry in ("interact", "nointeract")

    def _remote(self) -> tuple[str, str]:
        endpoint = getattr(self.session, "endpoint", None)
        if endpoint is None:
            return "", ""
        return endpoint.address, str(endpoint.sockaddr[1])

    def _tunnel_addresses(self) -> tuple[str, str]:
        cfg = getattr(self.info, "tun_config", None)
        if cfg is None:
            return "", ""
        v4 = cfg.ipv4[0] if cfg.ipv4 else ""
        v6 = cfg.ipv6[0] if cfg.ipv6 else ""
        return str(v4), str(v6)

    # -- what status, metrics and `trivpn status` read ------------------------------------

    def figures(self) -> SessionFigures | None:
        session = self.session
        if session is None:
            return None
        v4, v6 = self._tunnel_addresses()
        return figures_of(
            session.stack, self.key_clock, self.wall(), remote=session.endpoint.describe(),
            handshake_seconds=self.handshake_seconds, local_ipv4=v4, local_ipv6=v6,
            extra={"state": self.states[-1].name if self.states else ""},
        )

    def all_figures(self) -> list[SessionFigures]:
        fig = self.figures() if self.info is not None else None
        return [fig] if fig is not None else []

    def figures_json(self) -> str:
        fig = self.figures()
        state = self.states[-1] if self.states else None
        return json.dumps({
            "role": "client",
            "pid": os.getpid(),
            "state": state.name if state else "",
            "state_since": state.time if state else None,
            "sessions": [fig.as_dict()] if fig is not None else [],
        })

    def client_status(self) -> ClientStatus:
        fig = self.figures()
        rx = fig.bytes_in if fig else 0
        tx = fig.bytes_out if fig else 0
        return ClientStatus(int(self.wall()), tx, rx, rx, tx, rx)

    def status_text(self, eol: str = "\n") -> str:
        return format_client_status(self.client_status(), eol=eol)

    def log_status(self) -> None:
        for line in self.status_text().splitlines():
            log.info("%s", line)

    # -- management host side -------------------------------------------------------------

    def status_lines(self, version: int | None) -> Sequence[str] | None:
        return self.status_text().splitlines()[:-1]  # the core adds END

    def bytecounts(self) -> ByteCounts:
        fig = self.figures()
        return ByteCounts(fig.bytes_in, fig.bytes_out) if fig else ByteCounts(0, 0)

    def pending_queries(self) -> Sequence[str]:
        return [f.password_needed("Auth")] if self._asking else []

    def hold_waiting(self) -> int | None:
        return None if self._released.is_set() else self._holding

    def perform(self, command: c.Command) -> Reply | None:
        match command:
            case c.Signal("SIGTERM"):
                self.add_state("EXITING", "SIGTERM")
                self.engine.request_stop("SIGTERM")
            case c.Signal("SIGUSR2"):
                self.log_status()
            case c.Signal(name):
                self.restart(name)
            case c.Hold("query"):
                return Reply.success(f"hold={int(self.hold_flag)}")
            case c.Hold("on") | c.Hold("off"):
                self.hold_flag = command.action == "on"
            case c.Hold("release"):
                self._released.set()
            case c.Username(_, value) | c.Password(_, value):
                self._given[type(command).__name__.lower()] = value
                if len(self._given) == 2:
                    self._credentials.set()
            case c.AuthRetry(None):
                return Reply.success(f"auth-retry={self.auth_retry}")
            case c.AuthRetry(mode):
                self.auth_retry = mode or "none"
            case c.LoadStats():
                counts = self.bytecounts()
                return Reply.success(f"nclients=0,bytesin={counts.bytes_in},bytesout={counts.bytes_out}")
        return None

    def restart(self, name: str) -> None:
        """SIGUSR1/SIGHUP: tell the server (bounded), then end the session and reconnect."""
        log.info("%s received, restarting the session", name)

        if self.nursery is not None:
            self.nursery.start_soon(self.engine.restart_after_goodbye, name)
        else:
            self.engine.restart(name)
