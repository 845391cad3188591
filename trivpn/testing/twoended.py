"""The in-memory two-ended harness: a client-role stack and a server-role stack, no root.

Theory of operation: both ends are `trivpn.session.stack.SessionStack`s — the very stack the
client runs over a socket — joined by a `MemoryLink` (seeded loss, reordering, duplication,
delay) instead of networkio, each with a `UserspaceTun` instead of a kernel TUN. Nothing
opens a socket or needs root or an openvpn binary, and everything runs on trio's clock, so
with `trio.testing.MockClock(autojump_threshold=0)` retransmissions, renegotiation timers
and link delays cost no real time.

`open_two_ended(...)` starts both stacks, waits until the client reports `TunnelUp` and the
server `ClientReady` (reset exchange, TLS, key method 2, PUSH_REQUEST/PUSH_REPLY, keys
installed) and yields a
`TwoEnded` whose `client_tun` / `server_tun` carry IP packets through the tunnel. Each end's
received packets are counted in `received`; how each stack ended is kept in `ended`
(a stack that fails does not take the other down: that is how "the server saw the client
leave" is observed). Leaving the context cancels whatever still runs.

Both TLS layers are the production `TLSService` around a `KeySchedule`, one in each role.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import field
from typing import Any

import trio

from trivpn.controlchannel.service import control_payload_size
from trivpn.controlchannel.wrap import ControlWrap, NoWrap, StaticKey, TLSAuth, TLSCrypt
from trivpn.errors import ConfigError
from trivpn.messages import ClientReady, Renegotiate, SendExit, SendExitNotify, TunnelUp
from trivpn.packetmuxer import PacketMuxer
from trivpn.records import dataclass
from trivpn.session.stack import DATA_CHANNEL_SIZE, Runnable, SessionStack, TLSPorts
from trivpn.testing.memlink import MemoryLink
from trivpn.testing.pki import PKI, generate_pki
from trivpn.testing.relaycore import RelayConfig
from trivpn.tlssession.core import TLSSession
from trivpn.tlssession.keymethod import (
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_DYN_TLS_CRYPT,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
    occ_options_string,
    peer_info_string,
)
from trivpn.tlssession.keyschedule import KeySchedule, KeyScheduleConfig
from trivpn.tlssession.negotiation import CipherPolicy
from trivpn.tlssession.service import TLSService
from trivpn.tlssession.tls import TLSConfig
from trivpn.tun.service import run_tun
from trivpn.tun.userspace import UserspaceTun
from trivpn.workers.manager import primary_error

SIDES = ("client", "server")
WRAPS = ("none", "tls-auth", "tls-crypt")
DEFAULT_CIPHERS = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
DEFAULT_PUSH = ("topology subnet", "ifconfig 10.8.0.2 255.255.255.0")


@dataclass(slots=True)
class TwoEndedConfig:
    """Both ends' settings (client and server agree on wrap, ciphers and key)."""

    link: RelayConfig = field(default_factory=RelayConfig)
    wrap: str = "none"
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    #: "auto" lets the client offer TLS-EKM (and dynamic tls-crypt); "prf" never
    key_derivation: str = "auto"
    client_reneg_sec: float = 0.0
    server_reneg_sec: float = 0.0
    push_options: tuple[str, ...] = DEFAULT_PUSH
    #: seconds both ends wait for the tunnel (TLS hand-window)
    hand_window: float = 60.0
    #: the client offers cc-exit (EXIT on the control channel); else OCC EXIT data packets
    cc_exit: bool = True

    def validate(self) -> None:
        if self.wrap not in WRAPS:
            raise ConfigError(f"wrap must be one of {', '.join(WRAPS)}, not {self.wrap!r}")
        if self.key_derivation not in ("auto", "prf"):
            raise ConfigError("key_derivation must be auto or prf")
        self.link.validate()


def server_tls_factory(
    pki: PKI,
    *,
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS,
    key_derivation: str = "auto",
    reneg_sec: float = 0.0,
    hand_window: float = 60.0,
    push: tuple[str, ...] = DEFAULT_PUSH,
    wrap: str = "none",
    wrap_key: bytes | None = None,
    proto: str = "udp",
    made: Callable[[TLSService], object] | None = None,
) -> Callable[[TLSPorts], TLSService]:
    """How a server-role `SessionStack` builds its TLS service (one peer, peer-id 0): the
    PKI's server certificate, a server-role key schedule pushing `push`. `made` sees the
    service once the stack built it."""
    tls_config = TLSConfig(
        ca_pem=pki.ca_cert, cert_pem=pki.server_cert, key_pem=pki.server_key,
        is_server=True, remote_cert_tls="client",
    )
    options = occ_options_string(
        proto="tcp-server" if proto.startswith("tcp") else proto, tls_client=False,
        tls_auth=wrap == "tls-auth", key_direction=0 if wrap == "tls-auth" else None,
    )

    def session(key_id: int, token: str | None) -> TLSSession:
        return TLSSession(tls_config, options_string=options)

    config = KeyScheduleConfig(
        role="server",
        policy=CipherPolicy(ciphers, None, key_derivation),
        reneg_sec=reneg_sec,
        hand_window=hand_window,
        wrap_key=wrap_key,
        push=push,
        peer_id=0,
    )

    def make(ports: TLSPorts) -> TLSService:
        tls = TLSService(
            KeySchedule(config, session),
            from_cc=ports.from_cc, to_cc=ports.to_cc, to_data=ports.to_data,
            events=ports.events, commands=ports.commands, usage=ports.usage,
        )
        if made is not None:
            made(tls)
        return tls

    return make


def session_id(rng: random.Random) -> bytes:
    """A random, non-zero session id."""
    sid = b"\x00" * 8
    while not any(sid):
        sid = rng.randbytes(8)
    return sid


def wrap_pair(wrap: str, pki: PKI) -> tuple[ControlWrap, ControlWrap, bytes | None]:
    """(client wrap, server wrap, key bytes for dyn-tls-crypt) for `wrap` (one of WRAPS)
    keyed with the PKI's static key."""
    if wrap == "none":
        return NoWrap(), NoWrap(), None
    key = StaticKey.from_text(pki.static_key)
    if wrap == "tls-auth":  # key-direction 1 on the client, 0 on the server
        return TLSAuth(key, 1, timestamp=1), TLSAuth(key, 0, timestamp=2), key.data
    return TLSCrypt(key, server=False, timestamp=1), TLSCrypt(key, server=True, timestamp=2), key.data


class TwoEnded:
    """Two running stacks and their TUNs (see the module docstring)."""

    def __init__(self, config: TwoEndedConfig, pki: PKI, rng: random.Random) -> None:
        config.validate()
        self.config = config
        self.link = MemoryLink(config.link)
        self.tun = {side: UserspaceTun(f"{side}tun") for side in SIDES}
        self.received: dict[str, Counter[bytes]] = {side: Counter() for side in SIDES}
        #: the client's TunnelUp and the server's ClientReady
        self.up: dict[str, TunnelUp | ClientReady | None] = {side: None for side in SIDES}
        self.ended: dict[str, BaseException | None] = {side: None for side in SIDES}
        self._up_events = {side: trio.Event() for side in SIDES}
        self._end_events = {side: trio.Event() for side in SIDES}
        cwrap, swrap, wrap_key = wrap_pair(config.wrap, pki)
        ends = {"client": self.link.client, "server": self.link.server}
        self._tun_channels: dict[str, tuple[Any, Any, Any, Any]] = {}
        self.stacks: dict[str, SessionStack] = {}
        self.tls: dict[str, TLSService] = {}
        for side, wrap in (("client", cwrap), ("server", swrap)):
            is_server = side == "server"
            tun_up_s, tun_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
            tun_down_s, tun_down_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
            self._tun_channels[side] = (tun_up_s, tun_up_r, tun_down_s, tun_down_r)
            self.stacks[side] = SessionStack(
                is_server=is_server,
                muxer=PacketMuxer(wrap, session_id(rng), is_server=is_server),
                make_tls=self._server_tls(pki, wrap_key) if is_server else self._client_tls(pki, wrap_key),
                net_up=ends[side].net_up,
                net_down=ends[side].net_down,
                payload_size=control_payload_size(wrap.overhead, ipv6=False),
                tun_up=tun_up_r,
                tun_down=tun_down_s,
                clock=trio.current_time,  # one clock for the whole harness (MockClock)
            )
        self.commands = {side: self.stacks[side].commands.clone() for side in SIDES}
        self.data_control = {side: self.stacks[side].data_control.clone() for side in SIDES}

    # -- the two TLS layers ----------------------------------------------------------------
    def _client_tls(self, pki: PKI, wrap_key: bytes | None) -> Callable[[TLSPorts], Runnable]:
        cfg = self.config
        tls_config = TLSConfig(ca_pem=pki.ca_cert, cert_pem=pki.client_cert, key_pem=pki.client_key, remote_cert_tls="server")
        iv_proto = IV_PROTO_DATA_V2 | IV_PROTO_REQUEST_PUSH | (IV_PROTO_CC_EXIT_NOTIFY if cfg.cc_exit else 0)
        if cfg.key_derivation == "auto":
            iv_proto |= IV_PROTO_TLS_KEY_EXPORT | IV_PROTO_DYN_TLS_CRYPT
        options = occ_options_string(proto="udp", tls_client=True, tls_auth=cfg.wrap == "tls-auth", key_direction=1 if cfg.wrap == "tls-auth" else None)
        peer_info = peer_info_string(version="2.6.14", platform="linux", ciphers=cfg.ciphers, iv_proto=iv_proto, extra={"IV_NCP": "2"})

        def session(key_id: int, token: str | None) -> TLSSession:
            return TLSSession(tls_config, options_string=options, peer_info=peer_info, pull=key_id == 0)

        config = KeyScheduleConfig(
            role="client",
            policy=CipherPolicy(cfg.ciphers, None, cfg.key_derivation),
            reneg_sec=cfg.client_reneg_sec,
            hand_window=cfg.hand_window,
            wrap_key=wrap_key,
        )
        return self._tls_service("client", config, session)

    def _server_tls(self, pki: PKI, wrap_key: bytes | None) -> Callable[[TLSPorts], Runnable]:
        cfg = self.config
        return server_tls_factory(
            pki, ciphers=cfg.ciphers, key_derivation=cfg.key_derivation, reneg_sec=cfg.server_reneg_sec,
            hand_window=cfg.hand_window, push=cfg.push_options, wrap=cfg.wrap, wrap_key=wrap_key,
            made=lambda tls: self.tls.__setitem__("server", tls),
        )

    def _tls_service(
        self, side: str, config: KeyScheduleConfig, session: Callable[[int, str | None], TLSSession]
    ) -> Callable[[TLSPorts], Runnable]:
        def make(ports: TLSPorts) -> Runnable:
            self.tls[side] = TLSService(
                KeySchedule(config, session),
                from_cc=ports.from_cc, to_cc=ports.to_cc, to_data=ports.to_data,
                events=ports.events, commands=ports.commands, usage=ports.usage,
            )
            return self.tls[side]

        return make

    # -- running ---------------------------------------------------------------------------
    async def _run_side(self, side: str) -> None:
        stack = self.stacks[side]
        tun_up_s, _tun_up_r, _tun_down_s, tun_down_r = self._tun_channels[side]
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: run_tun(self.tun[side], to_data=tun_up_s, from_data=tun_down_r))
                nursery.start_soon(self._watch_events, side)
                await stack.run()
                nursery.cancel_scope.cancel()
        except Exception as exc:  # a stack that ends is observed, not propagated
            self.ended[side] = primary_error(exc)
        finally:
            self._end_events[side].set()
            self._up_events[side].set()  # never leave a waiter hanging on a dead side

    async def _watch_events(self, side: str) -> None:
        async for ev in self.stacks[side].events:
            if isinstance(ev, TunnelUp | ClientReady) and self.up[side] is None:
                self.up[side] = ev
                self._up_events[side].set()

    async def _count(self, side: str) -> None:
        async for packet in self.tun[side]:
            self.received[side][packet] += 1

    async def wait_up(self) -> None:
        for side in SIDES:
            await self._up_events[side].wait()
            if self.up[side] is None:
                raise RuntimeError(f"the {side} stack ended before the tunnel came up: {self.ended[side]!r}")

    async def wait_until(self, condition: Callable[[], bool], within: float, poll: float = 0.01) -> None:
        """Wait (in trio time) until `condition()` holds; TooSlowError after `within` s."""
        with trio.fail_after(within):
            for _ in range(int(within / poll) + 2):
                if condition():
                    return
                await trio.sleep(poll)

    async def wait_ended(self, side: str) -> BaseException | None:
        await self._end_events[side].wait()
        return self.ended[side]

    # -- what tests do -----------------------------------------------------------------------
    async def send(self, side: str, packets: list[bytes]) -> None:
        """Inject IP packets into `side`'s TUN (they come out of the other side's)."""
        for p in packets:
            await self.tun[side].send(p)

    async def renegotiate(self, side: str) -> None:
        await self.commands[side].send(Renegotiate("test"))

    async def exit(self, side: str) -> None:
        """Leave the way the client does: EXIT with cc-exit, else OCC EXIT data packets (a
        server always says RESTART on the control channel)."""
        await self.commands[side].send(SendExit())
        if side == "client" and not self.tls[side].cc_exit:
            await self.data_control[side].send([SendExitNotify(count=2)])

    def renegotiations(self, side: str) -> int:
        return self.tls[side].renegotiations

    def primary_key_id(self, side: str) -> int | None:
        """The newest data key installed (the key schedule's primary). A server may still
        seal with the previous one until the client proved it has this one."""
        core = self.stacks[side].data.core
        if core is None:
            return None
        pending = core.pending_key_id
        return core.primary_key_id if pending is None else pending

    def sending_key_id(self, side: str) -> int | None:
        """The data key `side` seals its next batch with."""
        core = self.stacks[side].data.core
        return None if core is None else core.sending_key_id


def make_packet(side: str, index: int, size: int = 100) -> bytes:
    """A recognisable IPv4-looking packet (the data channel does not parse IP)."""
    tag = f"{side}:{index}:".encode()
    return b"\x45" + tag + bytes(max(0, size - 1 - len(tag)))


@asynccontextmanager
async def open_two_ended(
    config: TwoEndedConfig | None = None, *, pki: PKI | None = None, seed: int | None = None
) -> AsyncIterator[TwoEnded]:
    """Start both stacks and the link; yield once both report the tunnel up."""
    rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
    te = TwoEnded(config or TwoEndedConfig(), pki or generate_pki(), rng)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(te.link.run)
        for side in SIDES:
            nursery.start_soon(te._run_side, side)
            nursery.start_soon(te._count, side)
        with trio.fail_after(te.config.hand_window):
            await te.wait_up()
        try:
            yield te
        finally:
            nursery.cancel_scope.cancel()
