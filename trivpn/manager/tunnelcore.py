"""Sans-IO core of the tunnel role: request routing, the Start/Stop order, peer state.

Theory of operation
-------------------
:class:`TunnelCore` decides everything :class:`trivpn.manager.tunnel.Tunnel` does; the trio
service runs the engine, waits, and moves messages. Nothing here awaits or reads a clock:
``now`` (trio time, for the update timer) and ``wall`` (Unix time, for `last_handshake`) are
passed in, and so are the TUN byte counters (``counters``: bytes read from the TUN = sent
into the tunnel, bytes written to it; None while there is no device).

**Requests.** :meth:`receive_request` turns each item from the manager into an action:
:class:`StartTunnel` and :class:`StopTunnel` for the service to carry out, :class:`Reply`
(answer at once: the full peer state for GetPeerUpdate, an empty reply for a request we do
not serve), or None (a one-way message, ignored). A process serves one Start:
:meth:`claim_start` accepts the first and gives the "already started" answer for any other.

**Start.** The service prepares the engine; :meth:`start_failed` records a failure before
the engine ran, :meth:`engine_prepared`, :meth:`engine_started` and :meth:`engine_finished`
frame its run; :meth:`session_retry` reports a reconnect. While connecting, the engine asks for the network settings: :meth:`network_settings_request`
builds the request from the PUSH_REPLY, and :meth:`receive_network_settings` accepts the
manager's answer (the tunnel is then up) or raises :class:`FatalError`, which fails the
engine. Start is answered (:meth:`start_reply`) once the tunnel is up or the engine ended.

**Stop.** :meth:`stop_engine` says whether an engine is running that must be stopped (and
reports DISCONNECTING); the service stops it, lets Start's answer leave first, then sends
:meth:`stop_reply`, the last frame.

**Peer updates.** Every state change queues a pushed `PeerUpdate`; the service sends them
with :meth:`updates_to_send` right after each call. While CONNECTED, the timer
(:meth:`get_timer` / :meth:`handle_timer`) pushes one more every `peer_update_interval`
seconds when the byte counters moved.
"""

from __future__ import annotations

import logging
from dataclasses import field
from typing import Any

from trivpn.errors import FatalError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.convert import network_settings_request
from trivpn.manager.rpc import Notice, Request
from trivpn.records import dataclass

__all__ = [
    "PEER_UPDATE_INTERVAL",
    "Counters",
    "PeerState",
    "Reply",
    "StartTunnel",
    "StopTunnel",
    "TunnelAction",
    "TunnelCore",
]

log = logging.getLogger("trivpn.manager")

#: How often byte counters are pushed while they change (the reference uses 10 s).
PEER_UPDATE_INTERVAL = 10.0

#: (bytes read from the TUN = sent into the tunnel, bytes written to the TUN).
Counters = tuple[int, int]


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
        """The peer as a message, with the byte counters of `device.stats` if it has them."""
        stats = getattr(device, "stats", None)
        return self.to_message(None if stats is None else (stats.bytes_read, stats.bytes_written))

    def to_message(self, counters: Counters | None) -> pb.Peer:
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
        if counters is not None:
            peer.tx_bytes, peer.rx_bytes = counters
        return peer


@dataclass(slots=True)
class StartTunnel:
    """Start the engine (if `TunnelCore.claim_start` allows) and answer once it is up."""

    request: Request


@dataclass(slots=True)
class StopTunnel:
    """Stop the engine, answer Start if it is pending, then answer this: the last frame."""

    request: Request


@dataclass(slots=True)
class Reply:
    """Answer `request` with `message` now."""

    request: Request
    message: pb.TunnelMessage


TunnelAction = StartTunnel | StopTunnel | Reply


class TunnelCore:
    """The tunnel role's decisions for one manager (one Start per process)."""

    def __init__(self, *, peer_update_interval: float = PEER_UPDATE_INTERVAL) -> None:
        self.peer = PeerState()
        self.peer_update_interval = peer_update_interval
        self.started = False  # a Start was accepted
        self.up = False  # the manager applied the network settings
        self.engine_done = False  # the engine ended, or never could run
        self._pushes: list[PeerState] = []
        self._next_tick: float | None = None
        self._last_counters: Counters | None = None

    # ---------------------------------------------------------------- requests

    def receive_request(self, item: Request | Notice, counters: Counters | None) -> TunnelAction | None:
        """What to do with one item from the manager (None: nothing)."""
        if not isinstance(item, Request):
            log.warning("ignoring a one-way %s from the manager", item.kind)
            return None
        if item.kind == "stop":
            return StopTunnel(item)
        if item.kind == "start":
            return StartTunnel(item)
        if item.kind == "get_peer_update":
            return Reply(item, pb.TunnelMessage(peer_update=self._update(self.peer, counters)))
        log.warning("unexpected request %s from the manager", item.kind)
        return Reply(item, pb.TunnelMessage())

    def claim_start(self) -> pb.TunnelMessage | None:
        """None: this Start runs the engine; else the answer that refuses it."""
        if self.started:
            return pb.TunnelMessage(start=pb.StartResponse(success=False, error_message="already started"))
        self.started = True
        return None

    # ---------------------------------------------------------------- start

    def start_failed(self, error: str) -> pb.TunnelMessage:
        """The engine could not be prepared (one line): FAILED, and Start's answer."""
        self.engine_done = True
        self._set_state(pb.Peer.FAILED, error)
        return pb.TunnelMessage(start=pb.StartResponse(success=False, error_message=error))

    def engine_prepared(self, name: str) -> None:
        """The engine is built; `name` is the server the peer is reported as."""
        self.peer.name = name

    def engine_started(self) -> None:
        self._set_state(pb.Peer.CONNECTING)

    def engine_finished(self, error: str) -> None:
        """The engine ended (`error`: one line, empty for a clean stop)."""
        self.engine_done = True
        self._set_state(pb.Peer.FAILED if error else pb.Peer.DISCONNECTED, error)

    def session_retry(self) -> None:
        """A session ended and the engine reconnects: CONNECTING again. Without this the
        manager kept showing CONNECTED for as long as the server stayed away."""
        if self.engine_done or self.peer.state in (pb.Peer.CONNECTING, pb.Peer.DISCONNECTING):
            return
        self._set_state(pb.Peer.CONNECTING)

    def network_settings_request(self, info: Any) -> pb.TunnelMessage:
        """The request for the manager, from the engine's tunnel-up info (the PUSH_REPLY)."""
        req = network_settings_request(
            info.tun_config,
            remote=info.remote,
            dns_servers=list(info.settings.dns_servers),
            dns_domains=list(info.settings.dns_domains),
        )
        return pb.TunnelMessage(network_settings=req)

    def receive_network_settings(self, answer: Any, info: Any, wall: float) -> None:
        """The manager's answer: the tunnel is up, or FatalError says why not."""
        if answer.WhichOneof("msg") != "network_settings":
            raise FatalError("the manager did not answer the network settings request")
        if not answer.network_settings.success:
            raise FatalError(
                f"the manager could not apply the network settings: "
                f"{answer.network_settings.error_message or 'no reason given'}"
            )
        cfg = info.tun_config
        p = self.peer
        p.remote = info.remote
        p.cipher = info.cipher
        p.key_derivation = info.key_derivation
        p.last_handshake = wall
        p.ip_addrs = []
        if cfg.ipv4 is not None:
            p.ip_addrs.append(f"{cfg.ipv4[0]}/{cfg.ipv4[1]}")
        if cfg.ipv6 is not None:
            p.ip_addrs.append(f"{cfg.ipv6[0]}/{cfg.ipv6[1]}")
        self.up = True
        self._set_state(pb.Peer.CONNECTED)

    def start_reply(self) -> pb.TunnelMessage:
        """Start's answer once the tunnel is up or the engine ended, whichever came first."""
        if self.up:
            return pb.TunnelMessage(start=pb.StartResponse(success=True))
        error = self.peer.error_message or "the tunnel stopped"
        return pb.TunnelMessage(start=pb.StartResponse(success=False, error_message=error))

    # ---------------------------------------------------------------- stop

    def stop_engine(self) -> bool:
        """True (and DISCONNECTING) when an engine may be running and must be stopped."""
        if not self.started or self.engine_done:
            return False
        self._set_state(pb.Peer.DISCONNECTING)
        return True

    @staticmethod
    def stop_reply() -> pb.TunnelMessage:
        return pb.TunnelMessage(stop=pb.StopResponse(success=True))

    # ---------------------------------------------------------------- updates

    def updates_to_send(self, counters: Counters | None) -> list[pb.TunnelMessage]:
        """Pushed PeerUpdates queued by state changes (and the timer), oldest first."""
        out = [pb.TunnelMessage(peer_update=self._update(p, counters)) for p in self._pushes]
        self._pushes.clear()
        return out

    def start_timer(self, now: float) -> None:
        self._next_tick = now + self.peer_update_interval

    def get_timer(self) -> float | None:
        return self._next_tick

    def handle_timer(self, now: float, counters: Counters | None) -> None:
        """A tick: push the counters if they moved while CONNECTED."""
        if self._next_tick is None or now < self._next_tick:
            return
        self._next_tick = now + self.peer_update_interval
        if counters is None or self.peer.state != pb.Peer.CONNECTED:
            return
        if counters != self._last_counters:
            self._last_counters = counters
            self._pushes.append(_copy(self.peer))

    def _set_state(self, state: pb.Peer.State.ValueType, error: str = "") -> None:
        self.peer.state = state
        self.peer.error_message = error
        self._pushes.append(_copy(self.peer))

    @staticmethod
    def _update(peer: PeerState, counters: Counters | None) -> pb.PeerUpdate:
        return pb.PeerUpdate(upserted_peers=[peer.to_message(counters)])


def _copy(peer: PeerState) -> PeerState:
    return PeerState(
        peer.name, peer.state, peer.remote, list(peer.ip_addrs), peer.last_handshake,
        peer.cipher, peer.key_derivation, peer.error_message,
    )
