"""A seeded impairment relay: a bad network (or an attacker) between a client and a server.

Theory of operation
-------------------
The relay sits between a client and its server. For UDP it listens on one address and
forwards every datagram to the upstream address, and every answer back to the client (one
client at a time: the last address that wrote to the listening socket). On the way, each
datagram may be dropped, held back so that later ones overtake it (reordering), sent twice,
delayed, corrupted (bit flips), truncated, or followed by a replay of an older datagram or
by injected garbage — each with its own probability, separately per direction.

All decisions are made by `RelayCore` (in `testing.relaycore`), a pure sans-IO object: datagrams go in with
`receive_datagram(direction, data, now)`, come out with `datagrams_to_send(now)`, and
`get_timer()` says when the next held datagram falls due. Each direction draws from its
own `random.Random` seeded from the relay's seed, and every datagram consumes exactly the
same number of draws from it whatever happens to it, so the k-th datagram of a direction
meets the same fate on every run with the same seed, regardless of sizes or of traffic in
the other direction. (What the *peers* send in answer still depends on real timing, so a
run is reproducible in its impairments, not in its packet trace.)

`TCPRelayCore` does the same for one TCP connection: it can stall a direction (forwarding
pauses for a while), split chunks into small writes (exercising the peers' length framing)
and cut the connection.

The thin trio services (`UDPRelay`, `TCPRelay`) own the sockets, read the clock and pass it
in as `now`. Everything is bounded: held datagrams (`max_pending`, beyond which they are
counted as `overflow` and dropped), replay history, TCP buffers (reading pauses while a
direction's buffer is full), TCP connections, and the relay's lifetime.

Command line: ``python -m trivpn.testing.relay --help``.
"""

from __future__ import annotations

import argparse
import math
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from pathlib import Path

import trio

from trivpn.errors import ConfigError
from trivpn.testing.relaycore import (
    DIRECTION_NAMES,
    DOWN,
    MAX_DATAGRAM,
    UP,
    Counters,
    Impairment,
    RelayConfig,
    RelayCore,
    TCPCounters,
    TCPImpairment,
    TCPRelayCore,
    _check_non_negative,
    describe_counters,
)

# ---------------------------------------------------------------------------------------
# trio services


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


Capture = Callable[[int, bytes], None]


class UDPRelay:
    """Runs a `RelayCore` between a listening UDP socket and an upstream address."""

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        config: RelayConfig,
        *,
        lifetime: float = 600.0,
        capture: Capture | None = None,
    ) -> None:
        _check_non_negative("lifetime", lifetime)
        self.core = RelayCore(config)
        self.listen = listen
        self.upstream = upstream
        self.lifetime = lifetime
        self.capture = capture
        #: The bound listening address (port filled in when 0 was asked for).
        self.address: tuple[str, int] | None = None
        #: Where DOWN datagrams go: the last address the client wrote from.
        self.client: tuple[str, int] | None = None
        #: DOWN datagrams released before any client had written (nowhere to send them).
        self.no_client = 0
        self._wake = trio.Event()

    @property
    def counters(self) -> tuple[Counters, Counters]:
        return self.core.counters

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay until `lifetime` passes or the caller cancels; `started` gets the bound address."""
        lsock = trio.socket.socket(_family(self.listen[0]), socket.SOCK_DGRAM)
        usock = trio.socket.socket(_family(self.upstream[0]), socket.SOCK_DGRAM)
        with lsock, usock:
            await lsock.bind(self.listen)
            await usock.connect(self.upstream)
            self.address = lsock.getsockname()[:2]
            task_status.started(self.address)
            with trio.move_on_after(self.lifetime):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read, lsock, UP)
                    nursery.start_soon(self._read, usock, DOWN)
                    nursery.start_soon(self._pump, lsock, usock)

    async def _read(self, sock: trio.socket.SocketType, direction: int) -> None:
        while True:
            try:
                data, addr = await sock.recvfrom(MAX_DATAGRAM + 1)
            except ConnectionRefusedError:
                continue  # an ICMP port-unreachable from upstream: the server is not up (yet)
            if direction == UP:
                self.client = addr[:2]
            if self.capture is not None:
                self.capture(direction, data)
            self.core.receive_datagram(direction, data, trio.current_time())
            self._wake.set()

    async def _pump(self, lsock: trio.socket.SocketType, usock: trio.socket.SocketType) -> None:
        while True:
            for direction, data in self.core.datagrams_to_send(trio.current_time()):
                try:
                    if direction == UP:
                        await usock.send(data)
                    elif self.client is not None:
                        await lsock.sendto(data, self.client)
                    else:
                        self.no_client += 1
                except OSError:
                    self.core.counters[direction].send_errors += 1
            timer = self.core.get_timer()
            with trio.move_on_at(math.inf if timer is None else timer):
                await self._wake.wait()
            self._wake = trio.Event()


class TCPRelay:
    """Accepts TCP connections and relays each to upstream through its own `TCPRelayCore`."""

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        impairment: TCPImpairment,
        *,
        seed: int = 0,
        lifetime: float = 600.0,
        max_connections: int = 16,
        capture: Capture | None = None,
    ) -> None:
        impairment.validate()
        _check_non_negative("lifetime", lifetime)
        self.listen = listen
        self.upstream = upstream
        self.impairment = impairment
        self.seed = seed
        self.lifetime = lifetime
        self.max_connections = max_connections
        self.capture = capture
        self.address: tuple[str, int] | None = None
        #: Connections turned away beyond `max_connections`.
        self.refused = 0
        self._cores: list[TCPRelayCore] = []

    def totals(self) -> TCPCounters:
        """Counters summed over every connection so far."""
        out = TCPCounters()
        for core in self._cores:
            for f in fields(out):
                setattr(out, f.name, getattr(out, f.name) + getattr(core.counters, f.name))
        return out

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        lsock = trio.socket.socket(_family(self.listen[0]), socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await lsock.bind(self.listen)
        lsock.listen(16)
        listener = trio.SocketListener(lsock)
        async with listener:
            self.address = lsock.getsockname()[:2]
            task_status.started(self.address)
            with trio.move_on_after(self.lifetime):
                async with trio.open_nursery() as nursery:
                    while True:
                        stream = await listener.accept()
                        if len(self._cores) >= self.max_connections:
                            self.refused += 1
                            await stream.aclose()
                            continue
                        core = TCPRelayCore(self.impairment, self.seed * 1000 + len(self._cores))
                        self._cores.append(core)
                        nursery.start_soon(self._serve, stream, core)

    async def _serve(self, client: trio.SocketStream, core: TCPRelayCore) -> None:
        async with client:
            try:
                upstream = await trio.open_tcp_stream(*self.upstream)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                wakes = [trio.Event(), trio.Event()]
                ends = (upstream, client)  # destination of UP, of DOWN
                sources = (client, upstream)
                for d in (UP, DOWN):
                    nursery.start_soon(self._read, sources[d], d, core, wakes, nursery.cancel_scope)
                    nursery.start_soon(self._write, ends[d], d, core, wakes, nursery.cancel_scope)

    async def _read(
        self,
        src: trio.SocketStream,
        direction: int,
        core: TCPRelayCore,
        wakes: list[trio.Event],
        scope: trio.CancelScope,
    ) -> None:
        while True:
            while not core.can_receive(direction):
                if core.cut:
                    scope.cancel()
                    return
                await trio.sleep(0.01)  # the writer drains the buffer; bounded by the lifetime
            try:
                data = await src.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                scope.cancel()  # OpenVPN never half-closes: one side ending ends the connection
                return
            if self.capture is not None:
                self.capture(direction, data)
            core.receive_bytes(direction, data, trio.current_time())
            if core.cut:
                scope.cancel()
                return
            wakes[direction].set()

    async def _write(
        self,
        dst: trio.SocketStream,
        direction: int,
        core: TCPRelayCore,
        wakes: list[trio.Event],
        scope: trio.CancelScope,
    ) -> None:
        while True:
            for chunk in core.chunks_to_send(direction, trio.current_time()):
                try:
                    await dst.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    scope.cancel()
                    return
            timer = core.get_timer(direction)
            with trio.move_on_at(math.inf if timer is None else timer):
                await wakes[direction].wait()
            wakes[direction] = trio.Event()


# ---------------------------------------------------------------------------------------
# command line


def parse_hostport(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port); ConfigError if malformed."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT (IPv6 as [ADDR]:PORT), not {text!r}")
    return host, int(port)


class _CaptureFiles:
    """Writes each captured datagram (or TCP chunk) to DIR/<direction>-NNNN.bin, up to a limit."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        self.limit = limit
        self.count = 0
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, direction: int, data: bytes) -> None:
        if self.count >= self.limit:
            return
        self.count += 1
        (self.directory / f"{DIRECTION_NAMES[direction]}-{self.count:04d}.bin").write_bytes(data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trivpn.testing.relay",
        description="A seeded impairment relay for UDP (or TCP) between a client and a server. "
        "Per-direction settings: --up 'drop=0.2,reorder=0.1' (client → server) and --down "
        "(server → client) override the both-ways flags.",
    )
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="where the client connects")
    p.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the real server")
    p.add_argument("--tcp", action="store_true", help="relay TCP instead of UDP")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    for f in fields(Impairment):
        p.add_argument(f"--{f.name}", type=float, default=0.0, metavar="P",
                       help=f"probability of '{f.name}' per datagram, both directions")
    p.add_argument("--up", default="", metavar="SPEC", help="client → server, e.g. drop=0.2,garbage=0.1")
    p.add_argument("--down", default="", metavar="SPEC", help="server → client, same syntax")
    p.add_argument("--latency", type=float, default=0.0, help="one-way delay of every datagram (s)")
    p.add_argument("--delay-max", type=float, default=0.2, help="largest extra delay (s)")
    p.add_argument("--reorder-hold", type=float, default=0.05, help="hold time of a reordered datagram (s)")
    p.add_argument("--copies", action="store_true",
                   help="corrupt/truncate inject a damaged copy and keep the original (attack model)")
    p.add_argument("--stall", type=float, default=0.0, metavar="P", help="TCP: stall probability per chunk")
    p.add_argument("--stall-time", type=float, default=1.0, help="TCP: seconds a stall lasts")
    p.add_argument("--cut", type=float, default=0.0, metavar="P", help="TCP: cut probability per chunk")
    p.add_argument("--split", type=float, default=0.0, metavar="P",
                   help="TCP: probability a chunk is forwarded as small writes")
    p.add_argument("--lifetime", type=float, default=600.0, help="stop after this many seconds (default 600)")
    p.add_argument("--capture", type=Path, metavar="DIR", help="write received datagrams/chunks into DIR")
    p.add_argument("--capture-max", type=int, default=200, help="most files --capture writes")
    return p


def config_from_args(args: argparse.Namespace) -> RelayConfig:
    both = Impairment(**{f.name: getattr(args, f.name) for f in fields(Impairment)})
    both.validate()
    cfg = RelayConfig(
        up=Impairment.parse(args.up, both),
        down=Impairment.parse(args.down, both),
        seed=args.seed,
        latency=args.latency,
        delay_max=args.delay_max,
        reorder_hold=args.reorder_hold,
        mutate_copies=args.copies,
    )
    cfg.validate()
    return cfg


async def _run_then_stop(
    relay: UDPRelay | TCPRelay,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    await relay.run(task_status=task_status)
    scope.cancel()  # the lifetime ended: stop waiting for signals too


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _sig in signals:
        scope.cancel()
        return


async def _serve_cli(relay: UDPRelay | TCPRelay) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
            address = await nursery.start(_run_then_stop, relay, nursery.cancel_scope)
            target = f"{relay.upstream[0]}:{relay.upstream[1]}"
            print(f"relay listening on {address[0]}:{address[1]} -> {target}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        listen = parse_hostport(args.listen)
        upstream = parse_hostport(args.upstream)
        capture = _CaptureFiles(args.capture, args.capture_max) if args.capture else None
        relay: UDPRelay | TCPRelay
        if args.tcp:
            imp = TCPImpairment(stall=args.stall, stall_time=args.stall_time, cut=args.cut, split=args.split)
            relay = TCPRelay(listen, upstream, imp, seed=args.seed, lifetime=args.lifetime, capture=capture)
        else:
            relay = UDPRelay(listen, upstream, config_from_args(args), lifetime=args.lifetime, capture=capture)
    except ConfigError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(_serve_cli, relay)
    except OSError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return 1
    if isinstance(relay, UDPRelay):
        print(f"relay counters: {describe_counters(relay.counters)}", flush=True)
    else:
        print(f"relay counters: {relay.totals().describe()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "DOWN",
    "UP",
    "Impairment",
    "RelayConfig",
    "RelayCore",
    "TCPImpairment",
    "TCPRelay",
    "TCPRelayCore",
    "UDPRelay",
    "main",
    "parse_hostport",
]
