"""`async with trivpn.serve(config) as server:` — an OpenVPN server inside the program.

The real `trivpn serve` (trivpn.server.service.Server) with, by default, a userspace TUN:
what clients send to the server's network comes out of `server.receive()`, and packets the
program `send`s into the server side are routed to the client that owns the destination
address. No root needed on loopback; `tun="kernel"` opens a real TUN instead (root), as
`trivpn serve` does. Made for programs and test harnesses that need an OpenVPN endpoint.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from trio_util import AsyncValue  # type: ignore[import-untyped]  # trio-util ships no type hints

from trivpn.api.failures import raise_cause
from trivpn.errors import ConfigError
from trivpn.records import dataclass
from trivpn.server.clientsession import ClientSession
from trivpn.server.config import load_server_config
from trivpn.server.config_model import Listener, ServerConfig
from trivpn.server.service import Server
from trivpn.server.tun import open_server_tun
from trivpn.tun.base import TunDevice
from trivpn.tun.userspace import UserspaceTun

__all__ = ["ServedClient", "ServedServer", "serve"]


@dataclass(frozen=True, slots=True)
class ServedClient:
    """One connected client as the server sees it."""

    common_name: str
    #: where its packets come from (host, port)
    remote: tuple[str, int]
    #: its tunnel addresses (IPv4 and/or IPv6), once ready
    addresses: tuple[str, ...]
    #: keys negotiated and settings pushed: its packets flow
    ready: bool


def _describe(client: ClientSession) -> ServedClient:
    lease = client.lease
    addresses = tuple(str(p.address) for p in lease.pushes()) if lease is not None else ()
    return ServedClient(client.common_name, client.addr, addresses, client.ready is not None)


class ServedServer:
    """A running server (see the module docstring)."""

    def __init__(self, server: Server, tun: UserspaceTun | None) -> None:
        #: the engine underneath (its config, hub and client table) for what is not here
        self.server = server
        #: the server side's userspace TUN (None with tun="kernel")
        self.tun = tun
        #: every client that has a session now; wait with `await clients.wait_value(pred)`
        self.clients: AsyncValue[tuple[ServedClient, ...]] = AsyncValue(())
        self._ended = trio.Event()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) of every listener (the real port when the config asked for 0)."""
        return list(self.server.addresses)

    def _refresh(self) -> None:
        self.clients.value = tuple(_describe(c) for c in self.server.clients.values())

    async def wait_clients(self, count: int = 1) -> tuple[ServedClient, ...]:
        """Wait until at least `count` clients are ready; returns them all."""
        ready: tuple[ServedClient, ...] = await self.clients.wait_value(
            lambda cs: sum(c.ready for c in cs) >= count
        )
        return ready

    async def send(self, packet: bytes) -> None:
        """Send one IP packet into the server's side of the tunnels (to the client that owns
        its destination address)."""
        await self._userspace().send(packet)

    async def receive(self) -> bytes:
        """The next IP packet clients sent to the server's network; `trio.EndOfChannel` after
        the server has stopped."""
        return await self._userspace().receive()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._userspace().__aiter__()

    def _userspace(self) -> UserspaceTun:
        if self.tun is None:
            raise ConfigError("this server has a kernel TUN: the system routes its packets")
        return self.tun

    async def aclose(self) -> None:
        """Stop: clients are told (RESTART), every task ends, the TUN is closed. Idempotent."""
        self.server.request_stop("closed by the application")
        with trio.move_on_after(5):  # the goodbye takes about a second
            await self._ended.wait()


def _check_port(port: object, what: str) -> None:
    """A port the kernel takes as given: it keeps 16 bits, so 70000 listened on 4464."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigError(f"{what}: the port must be 0..65535, not {port!r}")


def _listeners(listeners: Sequence[tuple[str, str, int]]) -> tuple[Listener, ...]:
    """`serve(listeners=...)` checked: any proto but tcp was served as UDP before."""
    out = []
    for item in listeners:
        try:
            proto, host, port = item
        except (TypeError, ValueError):
            raise ConfigError(f"listeners: each must be (proto, host, port), not {item!r}") from None
        if proto not in ("udp", "tcp"):
            raise ConfigError(f"listeners: proto must be 'udp' or 'tcp', not {proto!r}")
        _check_port(port, "listeners")
        out.append(Listener(proto, port, host))
    if not out:
        raise ConfigError("listeners: give at least one (proto, host, port)")
    return tuple(out)


@asynccontextmanager
async def serve(
    config: ServerConfig | str | os.PathLike[str],
    *,
    tun: str = "userspace",
    listeners: Sequence[tuple[str, str, int]] | None = None,
    metrics_addr: tuple[str, int] | None = None,
    handle_signals: bool = False,
) -> AsyncIterator[ServedServer]:
    """Run a server until the block is left; yields once every listener is bound.

    `config`: a path (read in a worker thread) or a `ServerConfig`
    (`trivpn.parse_server_config(text)`). `listeners` replaces the config's `proto`/`port`/
    `local` with (proto, host, port) triples; port 0 picks a free port (see
    `server.addresses`). `tun`: "userspace" (packets through `server.send`/`receive`) or
    "kernel". `metrics_addr`: serve Prometheus metrics there (as `--metrics-addr`); a
    `management` line in the config works as with `trivpn serve`. Raises like `trivpn.connect` (the cause, typed; see `trivpn.api.failures`).
    """
    if not isinstance(config, ServerConfig):
        config = await trio.to_thread.run_sync(load_server_config, config)
    if listeners is not None:
        config = dataclasses.replace(config, listeners=_listeners(listeners))
    if metrics_addr is not None:
        _check_port(metrics_addr[1], "metrics_addr")
    if tun not in ("userspace", "kernel"):
        raise ConfigError(f"tun must be 'userspace' or 'kernel', not {tun!r}")
    device = UserspaceTun("srvtun", mtu=config.tun_mtu or 1500) if tun == "userspace" else None

    def userspace_factory(cfg: ServerConfig, add_cleanup: Callable[[Callable[[], Any]], None]) -> TunDevice:
        assert device is not None
        add_cleanup(device.close)
        return device

    server = Server(
        config, handle_signals=handle_signals, metrics_addr=metrics_addr,
        tun_factory=userspace_factory if device is not None else open_server_tun,
    )
    served = ServedServer(server, device)
    server.table.on_change = served._refresh

    async def run(task_status: trio.TaskStatus[None]) -> None:
        try:
            await server.run(task_status=task_status)
        finally:
            served._ended.set()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            try:
                yield served
            finally:
                server.request_stop("left the serve() block")
    except BaseExceptionGroup as group:
        raise_cause(group)
