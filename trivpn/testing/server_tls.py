"""TEST SCAFFOLDING: a minimal server-role TLS service for the in-memory two-ended harness.

This is not the server's key schedule (that is `tlssession.keyschedule`, issue 11); it is the
smallest thing that lets a client stack talk to a server stack in memory: one server
`TLSSession` per key id, the reset → TLS → key-method-2 → PUSH_REQUEST/PUSH_REPLY exchange,
cipher negotiation from the client's IV_CIPHERS, key derivation (TLS-EKM when the client
offers it), renegotiation from either side, and EXIT in both directions. No auth, no
auth-token, no hand-window, no lame-duck retirement. It runs on the stack's `TLSPorts`
exactly like the client's TLS service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from trivpn.datachannel.crypto import is_cbc, normalize_data_cipher
from trivpn.errors import FatalError, SessionRestart
from trivpn.messages import (
    Ciphertext,
    DynamicWrapKey,
    InstallKey,
    ResetComplete,
    SoftReset,
    TunnelUp,
)
from trivpn.profile.push import parse_push_options
from trivpn.session.stack import TLSPorts
from trivpn.tlssession.core import (
    ControlMessage,
    KeyExchangeComplete,
    PushRequestReceived,
    TLSSession,
)
from trivpn.tlssession.keymethod import (
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DYN_TLS_CRYPT,
    IV_PROTO_TLS_KEY_EXPORT,
)
from trivpn.tlssession.service import DYNAMIC_TLS_CRYPT_LABEL
from trivpn.workers.driver import CoreTimer, Outbox

log = logging.getLogger("trivpn.testing.server_tls")


class ClientLeft(SessionRestart):
    """The client said EXIT: this server session is over."""


@dataclass(frozen=True, slots=True)
class ServerPolicy:
    """What the scaffolding server pushes and accepts."""

    push_options: tuple[str, ...] = ("topology subnet", "ifconfig 10.8.0.2 255.255.255.0")
    data_ciphers: tuple[str, ...] = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    reneg_sec: float = 0.0
    peer_id: int = 0
    wrap_key: bytes | None = None  # the configured tls-auth/tls-crypt key (dyn-tls-crypt)


def _peer_info(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


class ScaffoldServerTLS:
    """Server-role TLS loop (see the module docstring: test scaffolding, not the server)."""

    def __init__(self, ports: TLSPorts, make_session: Callable[[int], TLSSession], policy: ServerPolicy) -> None:
        self._p = ports
        self._make = make_session
        self.policy = policy
        self.sessions: dict[int, TLSSession] = {}
        self._to_cc: Outbox[object] = Outbox(ports.to_cc)
        self._timer = CoreTimer()
        self.reset: ResetComplete | None = None
        self.primary: int | None = None
        self.pending: int | None = None
        self.renegotiations = 0
        self.cc_exit = False
        self._cipher = ""
        self._ekm = False
        self._reneg_at: float | None = None
        self._km0: KeyExchangeComplete | None = None

    def _open(self, key_id: int) -> None:
        for kid in [k for k in self.sessions if k not in (key_id, self.primary)]:
            del self.sessions[kid]
        self.sessions[key_id] = self._make(key_id)
        self.sessions[key_id].start(trio.current_time())
        self.pending = key_id

    async def _install(self, key_id: int) -> None:
        assert self.reset is not None
        key2 = self.sessions[key_id].data_key2(
            ekm=self._ekm, client_sid=self.reset.remote_session_id, server_sid=self.reset.local_session_id
        )
        auth = "SHA1" if is_cbc(self._cipher) else None
        await self._p.to_data.send([InstallKey(key_id, key2, self._cipher, self.policy.peer_id, None, 0.0, auth=auth)])
        if self.primary is not None:
            self.renegotiations += 1
        self.primary, self.pending = key_id, None
        rs = self.policy.reneg_sec
        self._reneg_at = trio.current_time() + rs if rs > 0 else None

    async def _push_reply(self, km: KeyExchangeComplete) -> None:
        info = _peer_info(km.peer_info)
        offered = [normalize_data_cipher(c) for c in info.get("IV_CIPHERS", "").split(":") if c]
        shared = [c for c in map(normalize_data_cipher, self.policy.data_ciphers) if c in offered]
        if not shared:
            raise FatalError("scaffold server: no shared data cipher")
        proto = int(info.get("IV_PROTO", "0") or 0)
        self._cipher, self._ekm = shared[0], bool(proto & IV_PROTO_TLS_KEY_EXPORT)
        self.cc_exit = bool(proto & IV_PROTO_CC_EXIT_NOTIFY)
        flags = [f for f, on in (("cc-exit", self.cc_exit), ("tls-ekm", self._ekm)) if on]
        dyn = self._ekm and bool(proto & IV_PROTO_DYN_TLS_CRYPT)
        flags += ["dyn-tls-crypt"] if dyn else []
        options = [*self.policy.push_options, f"peer-id {self.policy.peer_id}", f"cipher {self._cipher}"]
        options += [f"protocol-flags {' '.join(flags)}"] if flags else []
        self.sessions[0].send_control_message("PUSH_REPLY," + ",".join(options))
        await self._flush()
        if dyn:
            key = self.sessions[0].engine.export_keying_material(DYNAMIC_TLS_CRYPT_LABEL, 256)
            if self.policy.wrap_key:
                key = bytes(a ^ b for a, b in zip(key, self.policy.wrap_key, strict=True))
            await self._to_cc.send([DynamicWrapKey(key)])
        await self._install(0)
        hs = self.sessions[0].engine
        settings = parse_push_options(options)
        tunnel_up = TunnelUp(settings, self._cipher, "tls-ekm" if self._ekm else "tls1-prf", hs.peer_subject or "?", hs.tls_version or "?")
        await self._p.events.send(tunnel_up)

    async def renegotiate(self) -> None:
        """Server-initiated soft reset: the client answers and starts TLS (it is the TLS client)."""
        if self.pending is not None or self.primary is None:
            return
        kid = 1 if self.primary >= 7 else self.primary + 1
        self._open(kid)
        await self._to_cc.send([SoftReset(kid)])

    async def _handle(self, key_id: int) -> None:
        for ev in self.sessions[key_id].events():
            if isinstance(ev, KeyExchangeComplete) and key_id != 0:
                await self._install(key_id)
            elif isinstance(ev, KeyExchangeComplete):
                self._km0 = ev
            elif isinstance(ev, PushRequestReceived) and self._km0 and self.primary is None:
                await self._push_reply(self._km0)
            elif isinstance(ev, ControlMessage) and ev.text == "EXIT":
                raise ClientLeft("the client left (EXIT)")

    def _collect(self) -> list[object]:
        now = trio.current_time()
        return [Ciphertext(k, d) for k, s in self.sessions.items() if (d := s.ciphertext_to_send(now))]

    async def _flush(self) -> None:
        await self._to_cc.flush(self._collect)
        self._timer.poke()

    async def _up(self) -> None:
        async with self._p.from_cc:
            async for batch in self._p.from_cc:
                touched: set[int] = set()
                for item in batch:
                    if isinstance(item, ResetComplete) and self.reset is None:
                        self.reset = item
                        self._open(0)
                    elif isinstance(item, SoftReset) and item.key_id not in self.sessions:
                        self._open(item.key_id)  # the client renegotiates: answer, then serve TLS
                        await self._to_cc.send([SoftReset(item.key_id)])
                    elif isinstance(item, Ciphertext) and item.key_id in self.sessions:
                        self.sessions[item.key_id].receive_ciphertext(item.data, trio.current_time())
                        touched.add(item.key_id)
                for kid in sorted(touched):
                    await self._handle(kid)
                await self._flush()

    async def _on_timer(self) -> None:
        if self._reneg_at is not None and trio.current_time() >= self._reneg_at:
            self._reneg_at = None
            await self.renegotiate()
        await self._flush()

    async def _commands(self) -> None:
        async with self._p.commands:
            async for cmd in self._p.commands:
                if str(cmd).startswith("renegotiate"):
                    await self.renegotiate()
                elif cmd == "exit" and self.cc_exit and self.primary in self.sessions:
                    self.sessions[self.primary].send_control_message("RESTART")
                await self._flush()

    async def run(self) -> None:
        async with self._to_cc.channel, self._p.to_data, self._p.events:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commands)
                nursery.start_soon(self._timer.run, lambda: self._reneg_at, self._on_timer)
                await self._up()
                nursery.cancel_scope.cancel()
