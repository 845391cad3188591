"""A rootless `trivpn serve` for tests: `trivpn.serve` (the real Server) with its userspace
TUN the test plays the far side of, and trivpn's own clients (userspace too) on 127.0.0.1."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import trivpn
from trivpn import api
from trivpn.server.config import parse_server_config
from trivpn.server.config_model import Listener, ServerConfig
from trivpn.server.service import Server
from trivpn.testing.pki import PKI
from trivpn.tun.ip import build_echo_request, echo_reply_to, parse_echo_reply
from trivpn.tun.userspace import UserspaceTun


def server_config(
    pki: PKI, extra: str = "", protos: tuple[str, ...] = ("udp",), topology: str = "subnet"
) -> ServerConfig:
    """A server on 127.0.0.1 (ephemeral port per proto), 10.8.0.0/24, tls-crypt, plus `extra`."""
    text = "\n".join(
        [
            "server 10.8.0.0 255.255.255.0", f"topology {topology}", "dev tun", "proto udp",
            "keepalive 10 60", "dh none", "data-ciphers AES-256-GCM:CHACHA20-POLY1305",
            f"<ca>\n{pki.ca_cert}</ca>", f"<cert>\n{pki.server_cert}</cert>",
            f"<key>\n{pki.server_key}</key>", f"<tls-crypt>\n{pki.static_key}</tls-crypt>", extra,
        ]
    )
    cfg = parse_server_config(text)
    return dataclasses.replace(cfg, listeners=tuple(Listener(p, 0, "127.0.0.1", 4) for p in protos))


def client_profile(pki: PKI, port: int, proto: str = "udp") -> str:
    """A trivpn client profile for `pki`'s client certificate toward the test server."""
    lines = ["client", "dev tun", "nobind", f"remote 127.0.0.1 {port} {proto}"]
    for tag, pem in (("ca", pki.ca_cert), ("cert", pki.client_cert), ("key", pki.client_key)):
        lines += [f"<{tag}>", pem.strip(), f"</{tag}>"]
    lines += ["<tls-crypt>", pki.static_key.strip(), "</tls-crypt>"]
    return "\n".join(lines) + "\n"


@asynccontextmanager
async def running_server(cfg: ServerConfig, **server_kw: Any) -> AsyncIterator[tuple[Server, UserspaceTun]]:
    """The server, started (listening) on entry; on exit stopped, its cleanups done.
    `server_kw` go to `trivpn.serve` (e.g. metrics_addr). A thin shim over `trivpn.serve`
    for the tests written before it existed."""
    async with trivpn.serve(cfg, **server_kw) as served:
        assert served.tun is not None
        yield served.server, served.tun


async def answer_echo(tun: UserspaceTun | api.ServedServer, seen: list[bytes]) -> None:
    """The far side of the server's TUN: answer echo requests to the server's address."""
    async for packet in tun:
        seen.append(packet)
        reply = echo_reply_to(packet)
        if reply is not None:
            await tun.send(reply)


async def ping(tunnel: api.Tunnel, src: str, dst: str, seq: int) -> None:
    """One echo request through `tunnel`; its reply must come back among 16 packets."""
    await tunnel.send(build_echo_request(src, dst, 0x5151, seq, b"serve %d" % seq))
    for _ in range(16):
        reply = parse_echo_reply(await tunnel.receive())
        if reply is not None and reply.seq == seq:
            assert (reply.src, reply.dst) == (dst, src)
            return
    pytest.fail("no echo reply among 16 packets")
