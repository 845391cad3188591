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

from trivpn.datachannel.crypto import is_cbc
from trivpn.errors import FatalError, RemoteProtocolError, SessionRestart
from trivpn.messages import (
    AuthPending,
    Ciphertext,
    DynamicWrapKey,
    InstallKey,
    ResetComplete,
    SoftReset,
    TunnelUp,
)
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

#: RFC 5705 label of 2.6's dynamic tls-crypt key (ssl_backend.h).
DYNAMIC_TLS_CRYPT_LABEL = b"EXPORTER-OpenVPN-dynamic-tls-crypt"


class AuthTokenExpired(SessionRestart):
    """AUTH_FAILED,SESSION: the pushed auth-token is no longer valid; reconnect without it."""


def _auth_pending_timeout(text: str, default: float = 60.0) -> float:
    """`AUTH_PENDING,timeout 120` → 120 (OpenVPN's keyword list); default otherwise."""
    for part in text.split(",")[1:]:
        words = part.split()
        if len(words) == 2 and words[0] == "timeout" and words[1].isdigit():
            return float(min(int(words[1]), 3600))
    return default


@dataclass(slots=True)
class CipherPolicy:
    """What the client accepts for the data channel."""

    data_ciphers: list[str]
    fallback: str | None
    key_derivation: str  # "auto" | "ekm" | "prf"
    auth: str = "SHA1"  # HMAC digest for CBC ciphers (`auth`)


def choose_cipher(settings: PushedSettings, policy: CipherPolicy) -> str:
    from trivpn.datachannel.crypto import normalize_data_cipher

    if settings.cipher:
        name = normalize_data_cipher(settings.cipher)
        if name not in [normalize_data_cipher(c) for c in policy.data_ciphers]:
            raise FatalError(f"the server chose data cipher {name}, which is not in data-ciphers")
        return name
    if policy.fallback:
        return normalize_data_cipher(policy.fallback)
    raise FatalError(
        "the server did not negotiate a data cipher (no 'cipher' pushed); "
        "set data-ciphers-fallback to the server's cipher"
    )


class TLSService:
    def __init__(
        self,
        *,
        make_session: Callable[[int, str | None], TLSSession],
        policy: CipherPolicy,
        from_cc: trio.MemoryReceiveChannel[list[object]],
        to_cc: trio.MemorySendChannel[list[Ciphertext | SoftReset | DynamicWrapKey]],
        to_data: trio.MemorySendChannel[list[object]],
        events: trio.MemorySendChannel[object],
        commands: trio.MemoryReceiveChannel[str],
        reneg_sec: float = 3600.0,
        hand_window: float = 60.0,
        keepalive: tuple[float, float, float] = (0.0, 0.0, 0.0),
        wrap_key: bytes | None = None,
    ) -> None:
        """`keepalive` is the profile's (ping, ping-restart, ping-exit); pushed values win."""
        self._make_session = make_session
        self.policy = policy
        self.sessions: dict[int, TLSSession] = {}
        self.reset: ResetComplete | None = None
        self._from_cc = from_cc
        self._to_cc: Outbox[Ciphertext | SoftReset | DynamicWrapKey] = Outbox(to_cc)
        self._to_data = to_data
        self._events = events
        self._commands = commands
        self._timer = CoreTimer()
        self.handshake: HandshakeComplete | None = None
        self.settings: PushedSettings | None = None
        self.cc_exit = False
        self.dropped_control_messages = 0
        self.reneg_sec = reneg_sec
        self.hand_window = hand_window
        #: the key id carrying data, and the one being negotiated (if any)
        self.primary: int | None = None
        self.pending: int | None = None
        self._pending_started = 0.0
        self._reneg_at: float | None = None
        self._ekm = False
        self._cipher = ""
        self.renegotiations = 0
        self.keepalive = keepalive
        self._pending_events: list[object] = []
        #: the configured tls-auth / tls-crypt(-v2) key, mixed into the dynamic tls-crypt key
        self.wrap_key = wrap_key
        self.dynamic_tls_crypt = False

    def _deadline(self) -> float | None:
        timers = [t for s in self.sessions.values() if (t := s.get_timer()) is not None]
        if self.pending:  # a renegotiation (the first key's deadline is the client's)
            timers.append(self._pending_started + self.hand_window)
        elif self._reneg_at is not None:
            timers.append(self._reneg_at)
        return min(timers) if timers else None

    @staticmethod
    def next_key_id(key_id: int) -> int:
        """Key ids run 1..7 after the first key (0), wrapping to 1, never back to 0."""
        return 1 if key_id >= 7 else key_id + 1

    def _open_key(self, key_id: int) -> TLSSession:
        """A brand-new TLS session for a renegotiation (never TLS-level renegotiation)."""
        keep = {key_id, self.primary}
        for kid in [k for k in self.sessions if k not in keep]:
            del self.sessions[kid]
        token = self.settings.auth_token if self.settings is not None else None
        session = self._make_session(key_id, token)
        self.sessions[key_id] = session
        self.pending = key_id
        self._pending_started = trio.current_time()
        return session

    async def start_renegotiation(self, reason: str) -> None:
        """Client-initiated soft reset: our SOFT_RESET first, TLS once the peer answers."""
        if self.pending is not None or self.primary is None:
            return
        kid = self.next_key_id(self.primary)
        log.info("renegotiating data keys (%s): key id %d", reason, kid)
        self._open_key(kid)
        await self._to_cc.send([SoftReset(kid)])
        self._timer.poke()

    async def _on_soft_reset(self, key_id: int, now: float) -> None:
        if key_id == self.pending:
            # the peer answered our soft reset: we are the TLS client, so we start
            self.sessions[key_id].start(now)
            return
        if key_id in self.sessions:
            return  # a repeated reset of a key we already have
        if self.primary is None:
            log.debug("ignoring a soft reset before the first key is up")
            return
        if key_id != self.next_key_id(self.primary):
            log.warning("server renegotiates with key id %d (expected %d)", key_id, self.next_key_id(self.primary))
        log.info("server started a renegotiation: key id %d", key_id)
        session = self._open_key(key_id)
        await self._to_cc.send([SoftReset(key_id)])
        session.start(now)

    async def _install_renegotiated(self, key_id: int) -> None:
        assert self.reset is not None
        key2 = self.sessions[key_id].data_key2(
            ekm=self._ekm,
            client_sid=self.reset.local_session_id,
            server_sid=self.reset.remote_session_id,
        )
        s = self.settings
        assert s is not None
        await self._to_data.send(
            [
                self._install_key(key_id, key2, s, self._cipher)
            ]
        )
        self.primary = key_id
        self.pending = None
        self.renegotiations += 1
        self._schedule_reneg()
        log.info("new data keys in use: key id %d (renegotiation %d)", key_id, self.renegotiations)

    def _install_key(
        self, key_id: int, key2: bytes, s: PushedSettings, cipher: str
    ) -> InstallKey:
        ping, restart, ping_exit = self.keepalive
        return InstallKey(
            key_id,
            key2,
            cipher,
            s.peer_id,
            s.compression,
            float(s.ping if s.ping is not None else ping),
            float(s.ping_restart if s.ping_restart is not None else restart),
            ping_exit,
            self.policy.auth if is_cbc(cipher) else None,
        )

    def _dynamic_key(self, session: TLSSession) -> bytes:
        """EKM "EXPORTER-OpenVPN-dynamic-tls-crypt", XORed with the configured wrap key.

        Mixing in the static key keeps renegotiations protected by what the user configured
        even if the TLS session's secrets leaked.
        """
        key = session.engine.export_keying_material(DYNAMIC_TLS_CRYPT_LABEL, 256)
        if self.wrap_key:
            key = bytes(a ^ b for a, b in zip(key, self.wrap_key, strict=True))
        return key

    def _schedule_reneg(self) -> None:
        self._reneg_at = trio.current_time() + self.reneg_sec if self.reneg_sec > 0 else None

    def _collect(self) -> list[Ciphertext | SoftReset | DynamicWrapKey]:
        now = trio.current_time()
        out: list[Ciphertext | SoftReset | DynamicWrapKey] = []
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
                if key_id != 0 and key_id == self.pending:
                    await self._install_renegotiated(key_id)
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
        if "dyn-tls-crypt" in settings.protocol_flags and ekm:
            await self._to_cc.send([DynamicWrapKey(self._dynamic_key(self.sessions[key_id]))])
            self.dynamic_tls_crypt = True
        self.settings = settings
        self._ekm = ekm
        self._cipher = cipher
        self.primary = key_id
        self.pending = None
        self._schedule_reneg()
        await self._to_data.send(
            [
                self._install_key(key_id, key2, settings, cipher)
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
            reason = text[len("AUTH_FAILED") :].lstrip(",")
            if reason.startswith("TEMP"):
                raise SessionRestart(f"the server refused authentication for now: {reason}")
            if reason.startswith("SESSION") and self.settings is not None:
                # our auth-token expired: log in again with the real credentials
                raise AuthTokenExpired(f"the server's auth-token expired: {reason}")
            raise FatalError(
                "the server refused authentication (AUTH_FAILED" + (f": {reason})" if reason else ")")
            )
        if head == "HALT":
            raise FatalError(f"the server halted the session: {text}")
        if head == "RESTART":
            err = SessionRestart(f"the server asked for a restart: {text}")
            # RESTART,[flags]message: N = go on to the next remote (P = keep credentials)
            flags = text[len("RESTART,") :].partition("]")[0] if text.startswith("RESTART,[") else ""
            err.advance = "N" in flags
            raise err
        if head == "EXIT":
            raise SessionRestart("the server closed the session (EXIT)")
        if head in ("INFO", "INFO_PRE", "AUTH_PENDING"):
            log.info("server says: %s", text)
            if head == "AUTH_PENDING":
                self._pending_events.append(AuthPending(_auth_pending_timeout(text)))
        else:
            self.dropped_control_messages += 1
            log.debug("ignored control message %r", text[:80])

    async def _flush_events(self) -> None:
        events, self._pending_events = self._pending_events, []
        for ev in events:
            await self._events.send(ev)

    async def _up(self) -> None:
        async with self._from_cc:
            async for batch in self._from_cc:
                now = trio.current_time()
                touched: set[int] = set()
                for item in batch:
                    if isinstance(item, ResetComplete):
                        self.reset = item
                        session = self._make_session(0, None)
                        self.sessions[0] = session
                        self.pending = 0
                        self._pending_started = now
                        session.start(now)
                        touched.add(0)
                    elif isinstance(item, SoftReset):
                        await self._on_soft_reset(item.key_id, now)
                        touched.add(item.key_id)
                    elif isinstance(item, Ciphertext):
                        session = self.sessions.get(item.key_id)
                        if session is None:
                            continue
                        try:
                            session.receive_ciphertext(item.data, now)
                        except RemoteProtocolError as exc:
                            if item.key_id != self.pending or item.key_id == 0:
                                raise SessionRestart(f"TLS failed: {exc}") from None
                            # a failed renegotiation: the current key keeps the tunnel up
                            log.warning("renegotiation of key id %d failed: %s", item.key_id, exc)
                            self.sessions.pop(item.key_id, None)
                            self.pending = None
                            self._schedule_reneg()
                            continue
                        touched.add(item.key_id)
                for kid in sorted(touched):
                    if kid in self.sessions:
                        await self._handle_events(kid)
                await self._flush_events()
                await self._flush()

    async def _on_timer(self) -> None:
        now = trio.current_time()
        for s in self.sessions.values():
            s.handle_timer(now)
        if self.pending and now >= self._pending_started + self.hand_window:
            log.warning(
                "renegotiation of key id %d did not finish within %g s; keeping key id %s",
                self.pending, self.hand_window, self.primary,
            )
            self.sessions.pop(self.pending, None)
            self.pending = None
            self._schedule_reneg()
        elif self.pending is None and self._reneg_at is not None and now >= self._reneg_at:
            self._reneg_at = None
            await self.start_renegotiation(f"reneg-sec {self.reneg_sec:g}")
        await self._flush()

    async def _commands_loop(self) -> None:
        async with self._commands:
            async for cmd in self._commands:
                if cmd == "exit" and self.cc_exit and self.primary in self.sessions:
                    self.sessions[self.primary].send_control_message("EXIT")
                    await self._flush()
                elif cmd.startswith("renegotiate"):
                    await self.start_renegotiation(cmd.partition(":")[2] or "requested")

    async def run(self) -> None:
        async with self._to_cc.channel, self._to_data, self._events:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commands_loop)
                nursery.start_soon(self._timer.run, self._deadline, self._on_timer)
                await self._up()
                nursery.cancel_scope.cancel()
