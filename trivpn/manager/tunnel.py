"""The tunnel role: trivpn's engine driven over the protocol by a privileged manager.

Theory of operation
-------------------
The tunnel owns no privileges: the manager created the TUN device and passes its fd
number in `StartRequest` (the fd itself was inherited). Every protocol decision is
:class:`~trivpn.manager.tunnelcore.TunnelCore`'s; `Tunnel.serve` reads the manager's
requests, hands each to the core, and carries out what it asks:

* **Start** builds (:func:`prepare_engine`) and runs a client `trivpn.engine.Engine` in a
  child task, with `configure_tun=False` and an `on_tunnel_up` hook. The hook sends a
  `NetworkSettingsRequest` built from the PUSH_REPLY and waits for the manager's answer;
  only a successful answer lets the engine declare the tunnel up. Start is answered once
  the tunnel is up, or with `success=false` and one line when the engine failed first.
* **Stop** asks the engine for a graceful stop (EXIT to the server), waits for it (bounded)
  and answers. That answer is the last frame (the speaker enforces it).
* **GetPeerUpdate** is answered with the full peer state. The state is also pushed
  (`PeerUpdate` without a request) on every state change and, while traffic flows, every
  `PEER_UPDATE_INTERVAL` seconds (the core's timer).

Logs of the "trivpn" logger are forwarded as `Log` messages by `RPCLogHandler`.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from trivpn.errors import ConfigError, FatalError, TrivpnError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.rpc import Request
from trivpn.manager.speaker import RPCClosed, Speaker
from trivpn.manager.tunnelcore import (
    PEER_UPDATE_INTERVAL,
    Counters,
    PeerState,
    Reply,
    StartTunnel,
    StopTunnel,
    TunnelCore,
)
from trivpn.session.runevents import SessionRetry

if TYPE_CHECKING:
    from trivpn.engine import Engine

__all__ = ["PEER_UPDATE_INTERVAL", "PeerState", "RPCLogHandler", "Tunnel", "log_message", "prepare_engine"]

log = logging.getLogger("trivpn.manager")

#: Bound on the engine's graceful stop (EXIT to the server) before it is cancelled.
STOP_TIMEOUT = 5.0

_LEVELS = (
    (logging.CRITICAL, pb.Log.CRITICAL),
    (logging.ERROR, pb.Log.ERROR),
    (logging.WARNING, pb.Log.WARN),
    (logging.INFO, pb.Log.INFO),
)


def log_message(record: logging.LogRecord) -> pb.TunnelMessage:
    """One log record as a one-way `Log` message."""
    level = next((lv for threshold, lv in _LEVELS if record.levelno >= threshold), pb.Log.DEBUG)
    try:
        text = record.getMessage()
    except Exception:  # a bad format string must not break logging
        text = str(record.msg)
    entry = pb.Log(level=level, message=text, logger_names=record.name.split("."))
    entry.fields.add(name="time", value=f"{record.created:.6f}")
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        entry.fields.add(name="error", value=f"{type(exc).__name__}: {exc}")
    return pb.TunnelMessage(log=entry)


class RPCLogHandler(logging.Handler):
    """Forwards log records to the manager; never blocks, drops (and counts) when full."""

    def __init__(self, speaker: Speaker, token: trio.lowlevel.TrioToken, level: int = logging.DEBUG) -> None:
        super().__init__(level)
        self.speaker = speaker
        self.token = token
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = log_message(record)

        def push() -> None:
            if not self.speaker.send_nowait(msg):
                self.dropped += 1

        try:  # run_sync_soon is thread-safe and keeps records in order
            self.token.run_sync_soon(push)
        except trio.RunFinishedError:
            self.dropped += 1


def _one_line(exc: BaseException) -> str:
    from trivpn.workers.manager import primary_error

    err = primary_error(exc)
    if isinstance(err, TrivpnError):
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, OSError):
        return f"{err.strerror or err}"
    return f"internal error: {type(err).__name__}: {err}"


#: struct ifreq as TUNGETIFF fills it: the interface name, then ifr_flags (40 bytes).
_IFREQ = struct.Struct("16sH22x")
TUNGETIFF = 0x800454D2  # _IOR('T', 210, unsigned int)
IFF_TUN = 0x0001


def check_tun_fd(fd: int, rpc_fds: frozenset[int] = frozenset()) -> str:
    """The kernel's interface name for `fd`, or ConfigError: the manager named one of our
    RPC descriptors (the TUN reader would steal its frames), or something that is not an
    attached TUN device (a pipe, a file, a TAP device)."""
    if fd in rpc_fds:
        raise ConfigError(f"tunnel_file_descriptor {fd} is the RPC stream, not a TUN device")
    if fd < 3:
        raise ConfigError(f"tunnel_file_descriptor {fd} is not a TUN fd (need an inherited fd >= 3)")
    try:
        os.fstat(fd)
    except OSError:
        raise ConfigError(f"tunnel_file_descriptor {fd} is not open in the tunnel process") from None
    try:
        ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))
    except OSError as exc:
        raise ConfigError(
            f"tunnel_file_descriptor {fd} is not a TUN device (TUNGETIFF: {exc.strerror})"
        ) from None
    raw, flags = _IFREQ.unpack(ifr)
    if not flags & IFF_TUN:
        raise ConfigError(f"tunnel_file_descriptor {fd} is a TAP device, not TUN")
    return bytes(raw).split(b"\0", 1)[0].decode(errors="replace")


def prepare_engine(
    start: pb.StartRequest,
    on_tunnel_up: Callable[[Any], Awaitable[None]],
    rpc_fds: frozenset[int] = frozenset(),
    on_event: Callable[[Any], None] | None = None,
) -> tuple[Engine, Any, str]:
    """Engine, TUN device and peer name from a StartRequest (ConfigError: one line).

    On an error the TUN fd is closed here: the caller gets no device to close.
    """
    from trivpn.engine import Engine, inherited_tun
    from trivpn.profile.profile import load_profile, parse_profile
    from trivpn.session.config import SessionConfig

    if start.profile_text:
        base = Path(start.profile_path).parent if start.profile_path else None
        profile = parse_profile(start.profile_text, base_dir=base, source=start.profile_path or None)
    elif start.profile_path:
        profile = load_profile(start.profile_path)
    else:
        raise ConfigError("StartRequest has neither profile_text nor profile_path")
    for w in profile.warnings:
        log.warning("%s", w)
    ifname = check_tun_fd(start.tunnel_file_descriptor, rpc_fds)
    device = inherited_tun(start.tunnel_file_descriptor, start.tunnel_name or ifname)
    try:
        config = SessionConfig.from_profile(
            profile,
            key_derivation=start.key_derivation or "auto",
            username=start.username,
            password=start.password,
        )
        engine = Engine(config, device, configure_tun=False, on_tunnel_up=on_tunnel_up, on_event=on_event)
    except BaseException:
        # nobody else holds the device yet: it stayed open until the process exited
        device.close()
        raise
    return engine, device, profile.remotes[0].host if profile.remotes else ""


def _counters(device: Any) -> Counters | None:
    stats = getattr(device, "stats", None)
    return None if stats is None else (stats.bytes_read, stats.bytes_written)


class Tunnel:
    """Serves one manager over `speaker` (which must already be running)."""

    def __init__(
        self,
        speaker: Speaker,
        *,
        peer_update_interval: float = PEER_UPDATE_INTERVAL,
        rpc_fds: frozenset[int] = frozenset(),
    ) -> None:
        self.speaker = speaker
        self.rpc_fds = rpc_fds  # never accepted as the TUN fd
        self.peer_update_interval = peer_update_interval
        self.core = TunnelCore(peer_update_interval=peer_update_interval)
        self.device: Any = None
        self.workers: Any = None
        self._settled = trio.Event()  # the tunnel is up, or the engine ended
        self._engine_done = trio.Event()
        self._start_answered = trio.Event()
        self._engine_scope = trio.CancelScope()

    @property
    def peer(self) -> PeerState:
        return self.core.peer

    async def serve(self) -> None:
        """Handle requests until Stop is answered or the manager hangs up."""
        self.core.start_timer(trio.current_time())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._periodic_updates)
            try:
                async with self.speaker.requests:
                    async for batch in self.speaker.requests:
                        for item in batch:
                            action = self.core.receive_request(item, _counters(self.device))
                            if isinstance(action, StopTunnel):
                                await self._stop_engine("stop requested by the manager")
                                if self.core.started:  # Start's answer leaves before Stop's (the last)
                                    with trio.move_on_after(STOP_TIMEOUT):
                                        await self._start_answered.wait()
                                await self._reply(action.request, self.core.stop_reply())
                                return
                            if isinstance(action, StartTunnel):
                                nursery.start_soon(self._start, action.request, nursery)
                            elif isinstance(action, Reply):
                                await self._reply(action.request, action.message)
            finally:
                # Manager gone (or Stop answered): the engine must not outlive the protocol.
                await self._stop_engine("the manager hung up")
                nursery.cancel_scope.cancel()

    async def _reply(self, request: Request, msg: pb.TunnelMessage) -> None:
        try:
            await self.speaker.reply(request, msg)
        except RPCClosed as exc:
            log.debug("reply to %d not sent: %s", request.msg_id, exc)

    def _push(self) -> None:
        """Send what the core queued (pushed PeerUpdates); dropped when the stream is full."""
        for msg in self.core.updates_to_send(_counters(self.device)):
            self.speaker.send_nowait(msg)

    async def _periodic_updates(self) -> None:
        while True:
            timer = self.core.get_timer()
            await trio.sleep_until(math.inf if timer is None else timer)
            self.core.handle_timer(trio.current_time(), _counters(self.device))
            self._push()

    async def _start(self, request: Request, nursery: trio.Nursery) -> None:
        refusal = self.core.claim_start()
        if refusal is not None:
            await self._reply(request, refusal)
            return
        try:
            try:
                engine, self.device, name = prepare_engine(
                    request.message.start, self._on_tunnel_up, self.rpc_fds, self._run_event
                )
            except TrivpnError as exc:
                self._engine_done.set()
                answer = self.core.start_failed(str(exc))
                self._push()
                await self._reply(request, answer)
                return
            self.core.engine_prepared(name)
            nursery.start_soon(self._engine, engine)
            await self._settled.wait()
            await self._reply(request, self.core.start_reply())
        finally:
            self._start_answered.set()

    async def _engine(self, engine: Engine) -> None:
        self.workers = engine.manager
        self.core.engine_started()
        self._push()
        error = ""
        try:
            with self._engine_scope:
                await engine.run()
        except Exception as exc:
            error = _one_line(exc)
            log.error("tunnel failed: %s", error)
        finally:
            self._engine_done.set()
            self._settled.set()
            self.core.engine_finished(error)
            self._push()

    def _run_event(self, event: Any) -> None:
        """The engine's events (synchronous, must not block): a reconnect is a state change."""
        if isinstance(event, SessionRetry):
            self.core.session_retry()
            self._push()

    async def _on_tunnel_up(self, info: Any) -> None:
        """Runs inside the engine before the tunnel is declared up: the manager configures."""
        try:
            answer = await self.speaker.request(self.core.network_settings_request(info))
        except RPCClosed as exc:
            raise FatalError(f"no answer to the network settings: {exc}") from None
        self.core.receive_network_settings(answer, info, time.time())
        self._push()
        self._settled.set()

    async def _stop_engine(self, reason: str) -> None:
        if not self.core.stop_engine():
            return
        with trio.CancelScope(shield=True):
            self._push()
            if self.workers is not None and self.workers.nursery is not None:
                self.workers.request_stop(reason)
            else:
                self._engine_scope.cancel()
            with trio.move_on_after(STOP_TIMEOUT):
                await self._engine_done.wait()
            if not self._engine_done.is_set():
                self._engine_scope.cancel()
                await self._engine_done.wait()
