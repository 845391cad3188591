"""`async with trivpn.connect(profile) as tunnel:` — a VPN tunnel as a trio channel of packets.

The tunnel is a userspace one: IP packets go in with `send` and come out with `receive`, no
root and no TUN device needed. It outlives reconnects (the session under it is replaced;
`info`, `state`, `events()` and `counters` follow). When the run ends for good, `receive`
hands out what was already delivered and then raises `trio.EndOfChannel`, `send` raises
`trio.BrokenResourceError`; after the application's own `aclose()` both raise
`trio.ClosedResourceError`, as with any trio channel.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from trio_util import AsyncValue  # type: ignore[import-untyped]  # trio-util ships no type hints

from trivpn.api.events import Broadcast, Counters, Down, Reconnecting, Renegotiated, TunnelEvent, Up
from trivpn.api.failures import raise_cause
from trivpn.engine import Engine, userspace_tun
from trivpn.errors import ConfigError
from trivpn.profile.profile import Profile, load_profile
from trivpn.profile.push import PushedSettings
from trivpn.session.config import HAND_WINDOW, SessionConfig
from trivpn.session.netsettings import TunnelInfo
from trivpn.session.runevents import KeysRenegotiated, RunEvent, SessionRetry, SessionUp
from trivpn.tun.userspace import UserspaceTun
from trivpn.workers.manager import primary_error

__all__ = ["Tunnel", "connect"]


class Tunnel(trio.abc.Channel[bytes]):
    """A running tunnel carrying IP packets for the application (see the module docstring).

    `state` is a `trio_util.AsyncValue`: "up", "reconnecting" or "down"; tasks wait on it
    with `await tunnel.state.wait_value("up")`.
    """

    def __init__(self, device: UserspaceTun) -> None:
        self._device = device
        self._engine: Engine | None = None
        self._info: TunnelInfo | None = None
        #: "up", "reconnecting" or "down"
        self.state: AsyncValue[str] = AsyncValue("connecting")
        self._events = Broadcast()
        self._closed = False
        self._ended = trio.Event()
        self._session: object | None = None
        self._past_data_drops = 0
        self._reconnects = 0
        self._renegotiations = 0

    # -- what the application reads ------------------------------------------------------------

    @property
    def info(self) -> TunnelInfo:
        """The current session's tunnel: pushed settings, cipher, peer, remote (replaced on
        every reconnect)."""
        assert self._info is not None, "connect() yields the tunnel once it is up"
        return self._info

    @property
    def settings(self) -> PushedSettings:
        """The network settings the server pushed (addresses, routes, DNS, MTU...)."""
        return self.info.settings

    @property
    def counters(self) -> Counters:
        """Traffic and drops since `connect`, across reconnects (a snapshot)."""
        s = self._device.stats
        return Counters(
            packets_in=s.packets_written, bytes_in=s.bytes_written,
            packets_out=s.packets_read, bytes_out=s.bytes_read,
            dropped_queue_full=s.dropped_full, dropped_oversize=s.dropped_oversize + s.dropped_errors,
            dropped_data=self._past_data_drops + _data_drops(self._session),
            reconnects=self._reconnects, renegotiations=self._renegotiations,
            events_dropped=self._events.dropped,
        )

    def events(self) -> trio.MemoryReceiveChannel[TunnelEvent]:
        """A new subscription to `Up`/`Reconnecting`/`Renegotiated`/`Down` events from now on:
        `async for event in tunnel.events():` ends after `Down`."""
        return self._events.subscribe()

    # -- trio.abc.Channel[bytes] ---------------------------------------------------------------

    async def send(self, value: bytes) -> None:
        """Send one IPv4/IPv6 packet into the tunnel (waits while the tunnel's queue is full)."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the tunnel was closed")
        try:
            await self._device.send(value)
        except trio.ClosedResourceError:
            if self._closed:
                raise
            raise trio.BrokenResourceError("the tunnel has ended") from None

    async def receive(self) -> bytes:
        """The next IP packet that came out of the tunnel; `trio.EndOfChannel` once the
        tunnel has ended and what it delivered was read."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the tunnel was closed")
        try:
            return await self._device.receive()
        except trio.EndOfChannel:
            if self._closed:
                raise trio.ClosedResourceError("the tunnel was closed") from None
            raise

    async def aclose(self) -> None:
        """Leave: tell the server (EXIT), stop every layer, and wait (about a second at most)
        for that to finish. Idempotent; leaving the `connect` block does the same."""
        if not self._closed:
            self._closed = True
            self.close()
            self._device.close()  # wakes the application's own blocked send/receive
        with trio.move_on_after(5):  # the engine's exit grace is 1 s; never hang here
            await self._ended.wait()

    def close(self) -> None:
        """Begin a graceful shutdown without waiting (see `aclose`)."""
        if self._engine is not None:
            self._engine.request_stop("closed by the application")

    # -- the engine's side -------------------------------------------------------------------

    def _run_event(self, ev: RunEvent) -> None:
        if isinstance(ev, SessionUp):
            first = self._info is None
            self._info, self._session = ev.info, ev.session
            self.state.value = "up"
            if not first:
                self._events.publish(Up(ev.info))
        elif isinstance(ev, SessionRetry):
            self._past_data_drops += _data_drops(self._session)
            self._session = None
            self._reconnects += 1
            self.state.value = "reconnecting"
            self._events.publish(Reconnecting(ev.reason, ev.delay))
        elif isinstance(ev, KeysRenegotiated):
            self._renegotiations += 1
            self._events.publish(Renegotiated(ev.key_id, self._renegotiations))

    def _run_ended(self, reason: str, error: BaseException | None) -> None:
        self._past_data_drops += _data_drops(self._session)
        self._session = None
        self._device.close()
        self.state.value = "down"
        self._events.publish(Down(reason, error))
        self._events.close()
        self._ended.set()


def _data_drops(session: object | None) -> int:
    stack = getattr(session, "stack", None)
    stats = stack.data.stats() if stack is not None else None
    if stats is None:
        return 0
    return int(stats.drop_auth + stats.drop_replay + stats.drop_malformed + stats.drop_no_key + stats.drop_compression)


#: `family` as documented (socket.AF_INET/AF_INET6), and the IP versions the CLI passes.
_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6, 4: 4, 6: 6}


def _family(family: int | None) -> int | None:
    """The session's IP version (4/6) for `connect(family=...)`: the documented values are
    socket.AF_INET and AF_INET6, which the session config (4 or 6) refused before."""
    if family is None:
        return None
    try:
        return _FAMILIES[family]
    except (KeyError, TypeError):
        raise ConfigError(f"family must be socket.AF_INET or socket.AF_INET6, not {family!r}") from None


@asynccontextmanager
async def connect(
    profile: str | os.PathLike[str] | Profile,
    *,
    key_derivation: str = "auto",
    username: str = "",
    password: str = "",
    hand_window: float = HAND_WINDOW,
    reconnect: bool = True,
    connect_timeout: float | None = None,
    family: int | None = None,
) -> AsyncIterator[Tunnel]:
    """Connect to the profile's server and yield a `Tunnel` once it is up.

    `profile`: a path (read in a worker thread) or a `Profile` (`trivpn.parse_profile`).
    The tunnel reconnects by itself when a session ends (server restart, ping-restart, lost
    connection) unless `reconnect=False`; `connect_timeout` bounds how long the first tunnel
    may take (None: keep trying, like `trivpn connect`).

    Raises what ended the run, typed by cause (`trivpn.AuthFailed`, `ConnectTimeout`, ...;
    all `TrivpnError`), with the engine's exception group as its `__context__`; the group
    itself when it holds several unrelated errors (see `trivpn.api.failures`).
    """
    family = _family(family)
    if not 0 < hand_window < math.inf:  # also refuses nan
        raise ConfigError(f"hand_window must be a number of seconds above 0, not {hand_window!r}")
    if connect_timeout is not None and not connect_timeout > 0:
        raise ConfigError(f"connect_timeout must be None or seconds above 0, not {connect_timeout!r}")
    if not isinstance(profile, Profile):
        profile = await trio.to_thread.run_sync(load_profile, profile)
    config = SessionConfig.from_profile(
        profile,
        key_derivation=key_derivation,
        username=username,
        password=password,
        hand_window=hand_window,
        no_reconnect=not reconnect,
        give_up_after=connect_timeout,
        family=family,
    )
    device = userspace_tun()
    tunnel = Tunnel(device)
    engine = Engine(config, device, close_device=False, on_event=tunnel._run_event)
    tunnel._engine = engine

    async def run(task_status: trio.TaskStatus[TunnelInfo]) -> None:
        error: BaseException | None = None
        try:
            await engine.run(task_status=task_status)
        except BaseException as exc:
            cause = primary_error(exc)
            error = None if isinstance(cause, trio.Cancelled) else cause
            raise
        finally:
            reason = str(error) if error is not None else engine.stop_reason or "cancelled"
            tunnel._run_ended(reason, error)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            try:
                yield tunnel
            finally:
                engine.request_stop("left the connect() block")
    except BaseExceptionGroup as group:
        raise_cause(group)
