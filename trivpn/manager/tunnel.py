"""The tunnel role: trivpn's engine driven over the protocol by a privileged manager.

Theory of operation
-------------------
The tunnel owns no privileges: the manager created the TUN device and passes its fd
number in `StartRequest` (the fd itself was inherited). `Tunnel.serve` reads the
manager's requests:

* **Start** runs a client `trivpn.engine.Engine` in a child task, with
  `configure_tun=False` and an `on_tunnel_up` hook. The hook sends a
  `NetworkSettingsRequest` built from the PUSH_REPLY and waits for the manager's answer;
  only a successful answer lets the engine declare the tunnel up. Start is answered once
  the tunnel is up, or with `success=false` and one line when the engine failed first.
* **Stop** asks the engine for a graceful stop (EXIT to the server), waits for it (bounded)
  and answers. That answer is the last frame (the speaker enforces it).
* **GetPeerUpdate** is answered with the full peer state. The state is also pushed
  (`PeerUpdate` without a request) on every state change and, while traffic flows, every
  `PEER_UPDATE_INTERVAL` seconds.

Logs of the "trivpn" logger are forwarded as `Log` messages by `RPCLogHandler`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from trivpn.errors import ConfigError, FatalError, TrivpnError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.convert import network_settings_request
from trivpn.manager.rpc import Request
from trivpn.manager.speaker import RPCClosed, Speaker

if TYPE_CHECKING:
    from trivpn.engine import Engine

__all__ = ["PEER_UPDATE_INTERVAL", "RPCLogHandler", "Tunnel", "log_message"]

log = logging.getLogger("trivpn.manager")

#: How often byte counters are pushed while they change (the reference uses 10 s).
PEER_UPDATE_INTERVAL = 10.0
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


@dataclass(slots=True)
class PeerState:
    """What a `Peer` message reports; `snapshot` builds it."""

    name: str = ""
    state: pb.Peer.State.ValueType = pb.Peer.UNKNOWN
    remote: str = ""
    ip_addrs: list[str] = field(default_factory=list)
    last_handshake: float | None = None
    cipher: str = ""
    key_derivation: str = ""
    error_message: str = ""

    def snapshot(self, device: Any) -> pb.Peer:
        peer = pb.Peer(
            name=self.name,
            state=self.state,
            remote=self.remote,
            ip_addrs=self.ip_addrs,
            cipher=self.cipher,
            key_derivation=self.key_derivation,
            error_message=self.error_message,
        )
        if self.last_handshake is not None:
            peer.last_handshake.FromNanoseconds(int(self.last_handshake * 1e9))
        stats = getattr(device, "stats", None)
        if stats is not None:
            peer.tx_bytes = stats.bytes_read  # read from the TUN = sent into the tunnel
            peer.rx_bytes = stats.bytes_written
        return peer


def _one_line(exc: BaseException) -> str:
    from trivpn.workers.manager import primary_error

    err = primary_error(exc)
    if isinstance(err, TrivpnError):
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, OSError):
        return f"{err.strerror or err}"
    return f"internal error: {type(err).__name__}: {err}"


class Tunnel:
    """Serves one manager over `speaker` (which must already be running)."""

    def __init__(self, speaker: Speaker, *, peer_update_interval: float = PEER_UPDATE_INTERVAL) -> None:
        self.speaker = speaker
        self.peer_update_interval = peer_update_interval
        self.peer = PeerState()
        self.device: Any = None
        self.workers: Any = None
        self._started = False
        self._up = trio.Event()
        self._engine_done = trio.Event()
        self._start_answered = trio.Event()
        self._engine_scope = trio.CancelScope()

    async def serve(self) -> None:
        """Handle requests until Stop is answered or the manager hangs up."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._periodic_updates)
            try:
                async with self.speaker.requests:
                    async for batch in self.speaker.requests:
                        for item in batch:
                            if not isinstance(item, Request):
                                log.warning("ignoring a one-way %s from the manager", item.kind)
                                continue
                            if item.kind == "stop":
                                await self._handle_stop(item)
                                return
                            if item.kind == "start":
                                nursery.start_soon(self._handle_start, item, nursery)
                            elif item.kind == "get_peer_update":
                                await self._reply(item, pb.TunnelMessage(peer_update=self._update()))
                            else:
                                log.warning("unexpected request %s from the manager", item.kind)
                                await self._reply(item, pb.TunnelMessage())
            finally:
                # Manager gone (or Stop answered): the engine must not outlive the protocol.
                await self._stop_engine("the manager hung up")
                nursery.cancel_scope.cancel()

    # ---------------------------------------------------------------- handlers

    async def _reply(self, request: Request, msg: pb.TunnelMessage) -> None:
        try:
            await self.speaker.reply(request, msg)
        except RPCClosed as exc:
            log.debug("reply to %d not sent: %s", request.msg_id, exc)

    def _update(self) -> pb.PeerUpdate:
        return pb.PeerUpdate(upserted_peers=[self.peer.snapshot(self.device)])

    def _push_update(self) -> None:
        self.speaker.send_nowait(pb.TunnelMessage(peer_update=self._update()))

    def _set_state(self, state: pb.Peer.State.ValueType, error: str = "") -> None:
        self.peer.state = state
        self.peer.error_message = error
        self._push_update()

    async def _periodic_updates(self) -> None:
        last: tuple[int, int] | None = None
        while True:
            await trio.sleep(self.peer_update_interval)
            stats = getattr(self.device, "stats", None)
            if stats is None or self.peer.state != pb.Peer.CONNECTED:
                continue
            now = (stats.bytes_read, stats.bytes_written)
            if now != last:
                last = now
                self._push_update()

    async def _handle_start(self, request: Request, nursery: trio.Nursery) -> None:
        if self._started:
            await self._reply(request, pb.TunnelMessage(start=pb.StartResponse(success=False, error_message="already started")))
            return
        self._started = True
        try:
            await self._start(request, nursery)
        finally:
            self._start_answered.set()

    async def _start(self, request: Request, nursery: trio.Nursery) -> None:
        start = request.message.start
        try:
            engine = self._prepare(start)
        except TrivpnError as exc:
            self._engine_done.set()
            self._set_state(pb.Peer.FAILED, str(exc))
            await self._reply(request, pb.TunnelMessage(start=pb.StartResponse(success=False, error_message=str(exc))))
            return
        nursery.start_soon(self._engine, engine)
        async with trio.open_nursery() as wait:

            async def until(event: trio.Event) -> None:
                await event.wait()
                wait.cancel_scope.cancel()

            wait.start_soon(until, self._up)
            wait.start_soon(until, self._engine_done)
        if self._up.is_set():
            response = pb.StartResponse(success=True)
        else:
            response = pb.StartResponse(success=False, error_message=self.peer.error_message or "the tunnel stopped")
        await self._reply(request, pb.TunnelMessage(start=response))

    def _prepare(self, start: pb.StartRequest) -> Engine:
        """Profile, TUN device and engine from a StartRequest (ConfigError: one line)."""
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
        device = inherited_tun(start.tunnel_file_descriptor, start.tunnel_name)
        config = SessionConfig.from_profile(
            profile,
            key_derivation=start.key_derivation or "auto",
            username=start.username,
            password=start.password,
        )
        engine = Engine(config, device, configure_tun=False, on_tunnel_up=self._on_tunnel_up)
        self.device = device
        self.peer.name = profile.remotes[0].host if profile.remotes else ""
        return engine

    async def _engine(self, engine: Engine) -> None:
        self.workers = engine.manager
        self._set_state(pb.Peer.CONNECTING)
        error = ""
        try:
            with self._engine_scope:
                await engine.run()
        except Exception as exc:
            error = _one_line(exc)
            log.error("tunnel failed: %s", error)
        finally:
            self._engine_done.set()
            self._set_state(pb.Peer.FAILED if error else pb.Peer.DISCONNECTED, error)

    async def _on_tunnel_up(self, info: Any) -> None:
        """Runs inside the engine before the tunnel is declared up: the manager configures."""
        cfg = info.tun_config
        req = network_settings_request(
            cfg,
            remote=info.remote,
            dns_servers=list(info.settings.dns_servers),
            dns_domains=list(info.settings.dns_domains),
        )
        try:
            answer = await self.speaker.request(pb.TunnelMessage(network_settings=req))
        except RPCClosed as exc:
            raise FatalError(f"no answer to the network settings: {exc}") from None
        if answer.WhichOneof("msg") != "network_settings":
            raise FatalError("the manager did not answer the network settings request")
        if not answer.network_settings.success:
            raise FatalError(
                f"the manager could not apply the network settings: "
                f"{answer.network_settings.error_message or 'no reason given'}"
            )
        p = self.peer
        p.remote = info.remote
        p.cipher = info.cipher
        p.key_derivation = info.key_derivation
        p.last_handshake = time.time()
        p.ip_addrs = []
        if cfg.ipv4 is not None:
            p.ip_addrs.append(f"{cfg.ipv4[0]}/{cfg.ipv4[1]}")
        if cfg.ipv6 is not None:
            p.ip_addrs.append(f"{cfg.ipv6[0]}/{cfg.ipv6[1]}")
        self._set_state(pb.Peer.CONNECTED)
        self._up.set()

    async def _stop_engine(self, reason: str) -> None:
        if not self._started or self._engine_done.is_set():
            return
        with trio.CancelScope(shield=True):
            self._set_state(pb.Peer.DISCONNECTING)
            if self.workers is not None and self.workers.nursery is not None:
                self.workers.request_stop(reason)
            else:
                self._engine_scope.cancel()
            with trio.move_on_after(STOP_TIMEOUT):
                await self._engine_done.wait()
            if not self._engine_done.is_set():
                self._engine_scope.cancel()
                await self._engine_done.wait()

    async def _handle_stop(self, request: Request) -> None:
        await self._stop_engine("stop requested by the manager")
        if self._started:  # Start's answer must leave before Stop's, which is the last frame
            with trio.move_on_after(STOP_TIMEOUT):
                await self._start_answered.wait()
        await self._reply(request, pb.TunnelMessage(stop=pb.StopResponse(success=True)))
