"""The TLS-session service: a thin trio loop around the KeySchedule (keyschedule.py).

In: control-channel items, Renegotiate/SendExit/AuthVerdict commands, its timer, the data channel's key
usage (polled once a second). Out, in the schedule's order: soft resets, wrap keys and TLS
bytes to the control channel; InstallKey/ActivateKey/RetireKey to the data channel; other
events to the session. Restart/Fatal end the service with SessionRestart/FatalError. Only here is the
clock read.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from trivpn.errors import CertificateRestart, SessionRestart
from trivpn.messages import (
    ActivateKey,
    AuthVerdict,
    Ciphertext,
    ControlToTLS,
    InstallKey,
    KeysRenegotiated,
    KeyUsage,
    PushAuthToken,
    Renegotiate,
    ResetComplete,
    RetireKey,
    SendExit,
    SessionEvent,
    SoftReset,
    TLSCommand,
    TLSToControl,
    TLSToData,
)
from trivpn.tlssession.control import Fatal, Restart
from trivpn.tlssession.keyschedule import KeySchedule
from trivpn.tlssession.negotiation import DYNAMIC_TLS_CRYPT_LABEL, CipherPolicy, choose_cipher
from trivpn.workers.driver import CoreTimer, Outbox

__all__ = ["DYNAMIC_TLS_CRYPT_LABEL", "AuthTokenExpired", "CipherPolicy", "TLSService", "choose_cipher"]

#: How often the data channel's key usage is read (reneg-bytes, reneg-pkts, packet-id wrap).
USAGE_POLL_INTERVAL = 1.0


class AuthTokenExpired(SessionRestart):
    """AUTH_FAILED,SESSION: the pushed auth-token is no longer valid; reconnect without it."""


def _restart_error(ev: Restart) -> SessionRestart:
    if ev.auth_token_expired:
        return AuthTokenExpired(ev.reason)
    return CertificateRestart(ev.reason) if ev.certificate else SessionRestart(ev.reason)


class TLSService:
    """Runs one KeySchedule; `usage` reads the data channel's KeyUsage (None: no polling)."""

    def __init__(
        self,
        schedule: KeySchedule,
        *,
        from_cc: trio.MemoryReceiveChannel[list[ControlToTLS]],
        to_cc: trio.MemorySendChannel[list[TLSToControl]],
        to_data: trio.MemorySendChannel[list[TLSToData]],
        events: trio.MemorySendChannel[SessionEvent],
        commands: trio.MemoryReceiveChannel[TLSCommand],
        usage: Callable[[], KeyUsage] | None = None,
    ) -> None:
        self.schedule = schedule
        self._from_cc = from_cc
        self._to_cc: Outbox[TLSToControl] = Outbox(to_cc)
        self._to_data = to_data
        self._events = events
        self._renegotiations = 0
        self._commands = commands
        self._usage = usage
        self._timer = CoreTimer()
        self._lock = trio.StrictFIFOLock()  # events leave in the order the schedule made them

    @property
    def cc_exit(self) -> bool:
        """The peer takes EXIT on the control channel (else OCC EXIT on the data channel)."""
        return self.schedule.cc_exit

    @property
    def renegotiations(self) -> int:
        return self.schedule.renegotiations

    async def _dispatch(self) -> None:
        """Route the schedule's events, then flush its output to the control channel."""
        async with self._lock:
            for ev in self.schedule.events():
                if isinstance(ev, InstallKey | ActivateKey | RetireKey):
                    await self._to_data.send([ev])
                elif isinstance(ev, Restart):
                    err = _restart_error(ev)
                    err.advance = ev.advance
                    raise err
                elif isinstance(ev, Fatal):
                    raise ev.error(ev.reason)
                else:
                    await self._events.send(ev)
            if self.schedule.renegotiations != self._renegotiations and self.schedule.primary is not None:
                self._renegotiations = self.schedule.renegotiations  # told to the owner (library events)
                await self._events.send(KeysRenegotiated(self.schedule.primary, self._renegotiations))
            await self._to_cc.flush(lambda: self.schedule.items_to_send(trio.current_time()))
        self._timer.poke()

    async def _up(self) -> None:
        async with self._from_cc:
            async for batch in self._from_cc:
                now = trio.current_time()
                for item in batch:
                    if isinstance(item, ResetComplete):
                        self.schedule.receive_reset(item, now)
                    elif isinstance(item, SoftReset):
                        self.schedule.receive_soft_reset(item.key_id, now)
                    elif isinstance(item, Ciphertext):
                        self.schedule.receive_ciphertext(item.key_id, item.data, now)
                await self._dispatch()

    async def _commands_loop(self) -> None:
        async with self._commands:
            async for cmd in self._commands:
                if isinstance(cmd, Renegotiate):
                    self.schedule.renegotiate(cmd.reason, trio.current_time())
                elif isinstance(cmd, SendExit):
                    self.schedule.send_exit(trio.current_time(), message=cmd.message)
                elif isinstance(cmd, AuthVerdict):
                    self.schedule.answer_auth(cmd.accept, cmd.reason, trio.current_time(), cmd.auth_token, cmd.key_id)
                elif isinstance(cmd, PushAuthToken):
                    self.schedule.push_auth_token(cmd.token, trio.current_time())
                await self._dispatch()

    async def _poll_usage(self, usage: Callable[[], KeyUsage]) -> None:
        while True:
            await trio.sleep(USAGE_POLL_INTERVAL)
            self.schedule.receive_usage(usage(), trio.current_time())
            await self._dispatch()

    async def _on_timer(self) -> None:
        self.schedule.handle_timer(trio.current_time())
        await self._dispatch()

    async def run(self) -> None:
        async with self._to_cc.channel, self._to_data, self._events:
            if self.schedule.is_server:  # the hand window counts from the session's start
                self.schedule.begin(trio.current_time())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commands_loop)
                nursery.start_soon(self._timer.run, self.schedule.get_timer, self._on_timer)
                if self._usage is not None:
                    nursery.start_soon(self._poll_usage, self._usage)
                await self._up()
                nursery.cancel_scope.cancel()
