"""The TLS-session service: runs the TLS core of each key id and acts on what it learns.

It starts TLS when the muxer reports the finished reset (that is when both session ids are
known), feeds ciphertext in and out, and on the complete PUSH_REPLY derives the data keys
(TLS-EKM or the TLS1-PRF, whichever was negotiated), hands them to the data channel and
reports the tunnel as up. Control messages that end a session (AUTH_FAILED, HALT, RESTART,
EXIT) end it here with a FatalError naming the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from trivpn.errors import FatalError, RemoteProtocolError
from trivpn.messages import Ciphertext, InstallKey, ResetComplete, TunnelUp
from trivpn.profile.push import PushedSettings, parse_push_options
from trivpn.tlssession.core import (
    ControlMessage,
    HandshakeComplete,
    KeyExchangeComplete,
    PushReplyReceived,
    TLSSession,
)
from trivpn.workers.driver import CoreTimer, Outbox

log = logging.getLogger("trivpn.tlssession")


@dataclass(slots=True)
class CipherPolicy:
    """What the client accepts for the data channel."""

    data_ciphers: list[str]
    fallback: str | None
    key_derivation: str  # "auto" | "ekm" | "prf"


def choose_cipher(settings: PushedSettings, policy: CipherPolicy) -> str:
    from trivpn.datachannel.crypto import normalize_cipher_name

    if settings.cipher:
        name = normalize_cipher_name(settings.cipher)
        if name not in [normalize_cipher_name(c) for c in policy.data_ciphers]:
            raise FatalError(f"the server chose data cipher {name}, which is not in data-ciphers")
        return name
    if policy.fallback:
        return normalize_cipher_name(policy.fallback)
    raise FatalError(
        "the server did not negotiate a data cipher (no 'cipher' pushed); "
        "set data-ciphers-fallback to the server's cipher"
    )


class TLSService:
    def __init__(
        self,
        *,
        make_session: Callable[[int], TLSSession],
        policy: CipherPolicy,
        from_cc: trio.MemoryReceiveChannel[list[object]],
        to_cc: trio.MemorySendChannel[list[Ciphertext]],
        to_data: trio.MemorySendChannel[list[object]],
        events: trio.MemorySendChannel[object],
        commands: trio.MemoryReceiveChannel[str],
    ) -> None:
        self._make_session = make_session
        self.policy = policy
        self.sessions: dict[int, TLSSession] = {}
        self.reset: ResetComplete | None = None
        self._from_cc = from_cc
        self._to_cc: Outbox[Ciphertext] = Outbox(to_cc)
        self._to_data = to_data
        self._events = events
        self._commands = commands
        self._timer = CoreTimer()
        self.handshake: HandshakeComplete | None = None
        self.settings: PushedSettings | None = None
        self.cc_exit = False
        self.dropped_control_messages = 0

    def _deadline(self) -> float | None:
        timers = [t for s in self.sessions.values() if (t := s.get_timer()) is not None]
        return min(timers) if timers else None

    def _collect(self) -> list[Ciphertext]:
        now = trio.current_time()
        out = []
        for kid, s in self.sessions.items():
            data = s.ciphertext_to_send(now)
            if data:
                out.append(Ciphertext(kid, data))
        return out

    async def _flush(self) -> None:
        await self._to_cc.flush(self._collect)
        self._timer.poke()

    async def _handle_events(self, key_id: int) -> None:
        session = self.sessions[key_id]
        for ev in session.events():
            if isinstance(ev, HandshakeComplete):
                self.handshake = ev
                log.info("TLS ok: %s, %s, server %s", ev.tls_version, ev.cipher, ev.peer_subject)
            elif isinstance(ev, KeyExchangeComplete):
                log.debug("key exchange complete; server options: %s", ev.peer_options)
            elif isinstance(ev, PushReplyReceived):
                await self._on_push_reply(key_id, ev.options)
            elif isinstance(ev, ControlMessage):
                self._on_control_message(ev.text)

    async def _on_push_reply(self, key_id: int, options: list[str]) -> None:
        if self.settings is not None:
            log.debug("ignoring a repeated PUSH_REPLY")
            return
        try:
            settings = parse_push_options(options)
        except RemoteProtocolError as exc:
            raise FatalError(f"unusable PUSH_REPLY from the server: {exc}") from None
        for w in settings.warnings:
            log.warning("%s", w)
        log.info("pushed settings: %s", ",".join(options))
        cipher = choose_cipher(settings, self.policy)
        ekm = settings.key_derivation_ekm or "tls-ekm" in settings.protocol_flags
        if self.policy.key_derivation == "ekm" and not ekm:
            raise FatalError("TLS-EKM key derivation was required but the server did not agree")
        assert self.reset is not None
        key2 = self.sessions[key_id].data_key2(
            ekm=ekm,
            client_sid=self.reset.local_session_id,
            server_sid=self.reset.remote_session_id,
        )
        self.cc_exit = "cc-exit" in settings.protocol_flags
        self.settings = settings
        await self._to_data.send(
            [
                InstallKey(
                    key_id,
                    key2,
                    cipher,
                    settings.peer_id,
                    settings.compression,
                    float(settings.ping or 0),
                    float(settings.ping_restart or 0),
                )
            ]
        )
        hs = self.handshake
        await self._events.send(
            TunnelUp(
                settings,
                cipher,
                "tls-ekm" if ekm else "tls1-prf",
                hs.peer_subject if hs else "?",
                hs.tls_version if hs else "?",
            )
        )

    def _on_control_message(self, text: str) -> None:
        head = text.split(",", 1)[0]
        if head == "AUTH_FAILED":
            raise FatalError(f"the server refused authentication: {text}")
        if head == "HALT":
            raise FatalError(f"the server halted the session: {text}")
        if head == "RESTART":
            raise FatalError(f"the server asked for a restart: {text}")
        if head == "EXIT":
            raise FatalError("the server closed the session (EXIT)")
        if head in ("INFO", "INFO_PRE", "AUTH_PENDING"):
            log.info("server says: %s", text)
        else:
            self.dropped_control_messages += 1
            log.debug("ignored control message %r", text[:80])

    async def _up(self) -> None:
        async with self._from_cc:
            async for batch in self._from_cc:
                now = trio.current_time()
                touched: set[int] = set()
                for item in batch:
                    if isinstance(item, ResetComplete):
                        self.reset = item
                        session = self._make_session(0)
                        self.sessions[0] = session
                        session.start(now)
                        touched.add(0)
                    elif isinstance(item, Ciphertext):
                        session = self.sessions.get(item.key_id)
                        if session is None:
                            continue
                        session.receive_ciphertext(item.data, now)
                        touched.add(item.key_id)
                for kid in sorted(touched):
                    await self._handle_events(kid)
                await self._flush()

    async def _on_timer(self) -> None:
        now = trio.current_time()
        for s in self.sessions.values():
            s.handle_timer(now)
        await self._flush()

    async def _commands_loop(self) -> None:
        async with self._commands:
            async for cmd in self._commands:
                if cmd == "exit" and self.cc_exit and 0 in self.sessions:
                    self.sessions[0].send_control_message("EXIT")
                    await self._flush()

    async def run(self) -> None:
        async with self._to_cc.channel, self._to_data, self._events:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commands_loop)
                nursery.start_soon(self._timer.run, self._deadline, self._on_timer)
                await self._up()
                nursery.cancel_scope.cancel()
