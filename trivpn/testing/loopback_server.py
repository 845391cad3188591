"""A one-peer server-role session stack on a loopback socket: the peer of rootless client tests.

Theory of operation: the server side of `trivpn.testing.twoended` — a server-role
`SessionStack` with the production `TLSService` and key schedule, the PKI's server
certificate, one peer with peer-id 0 — but on a real socket on 127.0.0.1 and an ephemeral
port instead of an in-memory link, so that the whole client (`trivpn.client.Client`,
`trivpn.api.connect`) can be run against it without root, a TUN device or an openvpn
binary. UDP: the first datagram names the peer and the socket is connected to it (the
kernel then drops anyone else's). TCP: the first connection is accepted, the listener
closed. networkio carries the packets either way; the stack's TUN is a `UserspaceTun`
whose far end answers ICMP/ICMPv6 echo requests (`trivpn.tun.ip.echo_reply_to`) and
counts them, so a ping through the tunnel gets its reply.

How the stack ended is kept in `ended` (an `Exception`, e.g. the `SessionRestart` saying
the client sent EXIT), never raised: that is how a test sees that the client said goodbye.
Nothing here needs root; traffic stays on loopback.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from trivpn.controlchannel.service import control_payload_size
from trivpn.errors import ConfigError
from trivpn.messages import ClientReady
from trivpn.networkio import Endpoint, Transport, run_networkio
from trivpn.networkio.transport import TCPTransport, UDPTransport
from trivpn.packetmuxer import PacketMuxer
from trivpn.records import dataclass
from trivpn.session.stack import DATA_CHANNEL_SIZE, SessionStack
from trivpn.testing.pki import PKI, generate_pki
from trivpn.testing.twoended import (
    DEFAULT_CIPHERS,
    DEFAULT_PUSH,
    WRAPS,
    server_tls_factory,
    session_id,
    wrap_pair,
)
from trivpn.tlssession.service import TLSService
from trivpn.tun.ip import echo_reply_to
from trivpn.tun.service import run_tun
from trivpn.tun.userspace import UserspaceTun
from trivpn.workers.manager import primary_error, start_named

__all__ = ["LoopbackServer", "LoopbackServerConfig", "accept_peer", "listen", "open_loopback_server"]

LOOPBACK = "127.0.0.1"
_RECV_SIZE = 65536


@dataclass(frozen=True, slots=True)
class LoopbackServerConfig:
    """The server's settings; the client profile (`client_profile`) is made to match."""

    proto: str = "udp"  # udp | tcp
    wrap: str = "none"  # none | tls-auth | tls-crypt
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    key_derivation: str = "auto"
    push_options: tuple[str, ...] = DEFAULT_PUSH
    reneg_sec: float = 0.0
    hand_window: float = 60.0

    def validate(self) -> None:
        if self.proto not in ("udp", "tcp"):
            raise ConfigError(f"proto must be udp or tcp, not {self.proto!r}")
        if self.wrap not in WRAPS:
            raise ConfigError(f"wrap must be one of {', '.join(WRAPS)}, not {self.wrap!r}")


class LoopbackServer:
    """One server-role session for the first peer on 127.0.0.1 (see the module docstring)."""

    def __init__(self, config: LoopbackServerConfig | None = None, *, pki: PKI | None = None, seed: int | None = None) -> None:
        self.config = config = config or LoopbackServerConfig()
        config.validate()
        self.pki = pki or generate_pki()
        self._rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        self.port = 0
        self.tun = UserspaceTun("loopsrv")
        #: the peer's address once it spoke (UDP) or connected (TCP)
        self.peer: tuple[str, int] | None = None
        self.ready: ClientReady | None = None
        self.ended: Exception | None = None
        self.echoed = 0
        self.stack: SessionStack | None = None
        self.tls: TLSService | None = None
        self._ready = trio.Event()
        self._ended = trio.Event()

    def client_profile(self, extra: str = "") -> str:
        """A client profile for this server: remote, PKI inline, the matching wrap."""
        pki, wrap = self.pki, self.config.wrap
        lines = ["client", "dev tun", "nobind", f"remote {LOOPBACK} {self.port} {self.config.proto}"]
        for tag, pem in (("ca", pki.ca_cert), ("cert", pki.client_cert), ("key", pki.client_key)):
            lines += [f"<{tag}>", pem.strip(), f"</{tag}>"]
        if wrap == "tls-auth":
            lines += ["key-direction 1", "<tls-auth>", pki.static_key.strip(), "</tls-auth>"]
        elif wrap == "tls-crypt":
            lines += ["<tls-crypt>", pki.static_key.strip(), "</tls-crypt>"]
        return "\n".join(lines) + "\n" + extra

    async def wait_ready(self) -> ClientReady:
        """The server's ClientReady (keys installed, pushed); RuntimeError if it ended first."""
        await self._ready.wait()
        if self.ready is None:
            raise RuntimeError(f"the server stack ended before the client was ready: {self.ended!r}")
        return self.ready

    async def wait_ended(self) -> Exception | None:
        """How the server's session ended (None: cancelled without an error)."""
        await self._ended.wait()
        return self.ended

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the port through `task_status`, serve the first peer until its
        session ends (recorded in `ended`) or the caller cancels."""
        try:
            await self._serve(task_status)
        except Exception as exc:  # a session that ends is observed, not propagated
            err = primary_error(exc)
            self.ended = err if isinstance(err, Exception) else exc
        finally:
            self._ended.set()
            self._ready.set()  # never leave a waiter hanging on a dead server

    async def _serve(self, task_status: trio.TaskStatus[int]) -> None:
        listener = listen(self.config.proto)
        try:
            self.port = listener.getsockname()[1]
            task_status.started(self.port)
            transport, first = await accept_peer(listener)
        except BaseException:
            listener.close()
            raise
        self.peer = (transport.endpoint.host, transport.endpoint.port)
        await self._run_stack(transport, first)

    async def _run_stack(self, transport: Transport, first: list[bytes]) -> None:
        cfg = self.config
        _cwrap, swrap, wrap_key = wrap_pair(cfg.wrap, self.pki)
        net_up_s, net_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        net_down_s, net_down_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        tun_up_s, tun_up_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        tun_down_s, tun_down_r = trio.open_memory_channel[list[bytes]](DATA_CHANNEL_SIZE)
        self.stack = stack = SessionStack(
            is_server=True,
            muxer=PacketMuxer(swrap, session_id(self._rng), is_server=True),
            make_tls=server_tls_factory(
                self.pki, ciphers=cfg.ciphers, key_derivation=cfg.key_derivation, reneg_sec=cfg.reneg_sec,
                hand_window=cfg.hand_window, push=cfg.push_options, wrap=cfg.wrap, wrap_key=wrap_key,
                proto=cfg.proto, made=lambda tls: setattr(self, "tls", tls),
            ),
            net_up=net_up_r,
            net_down=net_down_s,
            payload_size=control_payload_size(swrap.overhead, ipv6=False),
            tun_up=tun_up_r,
            tun_down=tun_down_s,
        )
        if first:
            net_up_s.send_nowait(first)  # the datagram that named the peer is its first reset
        async with trio.open_nursery() as nursery:
            start_named(nursery, "networkio", run_networkio, transport, net_up_s, net_down_r)
            nursery.start_soon(lambda: run_tun(self.tun, to_data=tun_up_s, from_data=tun_down_r))
            nursery.start_soon(self._watch_events)
            nursery.start_soon(self._answer_echo)
            await stack.run()
            nursery.cancel_scope.cancel()

    async def _watch_events(self) -> None:
        assert self.stack is not None
        async for ev in self.stack.events:
            if isinstance(ev, ClientReady) and self.ready is None:
                self.ready = ev
                self._ready.set()

    async def _answer_echo(self) -> None:
        """Play the far host: answer every echo request that comes out of the tunnel."""
        async for packet in self.tun:
            reply = echo_reply_to(packet)
            if reply is not None:
                self.echoed += 1
                await self.tun.send(reply)


def listen(proto: str) -> socket.socket:
    """A non-blocking UDP socket, or a listening TCP socket, on 127.0.0.1 and a free port."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        sock.setblocking(False)
        sock.bind((LOOPBACK, 0))
        if kind == socket.SOCK_STREAM:
            sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


async def accept_peer(sock: socket.socket) -> tuple[Transport, list[bytes]]:
    """The first peer as a transport, and what it already sent (UDP: its first datagram).

    UDP: the socket is connected to the sender of the first datagram. TCP: the first
    connection is accepted and the listener closed."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            if sock.type == socket.SOCK_DGRAM:
                data, addr = sock.recvfrom(_RECV_SIZE)
            else:
                conn, addr = sock.accept()
            break
        except BlockingIOError:
            continue
    if sock.type == socket.SOCK_DGRAM:
        sock.connect(addr)
        return UDPTransport(sock, Endpoint(addr[0], addr[1], "udp", socket.AF_INET, addr)), [data]
    sock.close()
    conn.setblocking(False)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return TCPTransport(conn, Endpoint(addr[0], addr[1], "tcp", socket.AF_INET, addr)), []


@asynccontextmanager
async def open_loopback_server(
    config: LoopbackServerConfig | None = None, *, pki: PKI | None = None, seed: int | None = None
) -> AsyncIterator[LoopbackServer]:
    """A listening `LoopbackServer` (its `port` set); leaving the block cancels it."""
    server = LoopbackServer(config, pki=pki, seed=seed)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
