"""A seeded impairment relay: a bad network (or an attacker) between a client and a server.

Theory of operation
-------------------
The relay sits between a client and its server. For UDP it listens on one address and
forwards every datagram to the upstream address, and every answer back to the client (one
client at a time: the last address that wrote to the listening socket). On the way, each
datagram may be dropped, held back so that later ones overtake it (reordering), sent twice,
delayed, corrupted (bit flips), truncated, or followed by a replay of an older datagram or
by injected garbage — each with its own probability, separately per direction.

All decisions are made by `RelayCore`, a pure sans-IO object: datagrams go in with
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
import heapq
import math
import random
import signal
import socket
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import trio

from trivpn.errors import ConfigError

#: Directions: UP is client → upstream server, DOWN is upstream server → client.
UP = 0
DOWN = 1
DIRECTION_NAMES = ("up", "down")
#: Largest UDP payload over IPv4.
MAX_DATAGRAM = 65507
#: Draws each datagram consumes from its direction's generator (see the module docstring).
_DRAWS = 8


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{name} must be a probability between 0 and 1, not {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a non-negative number of seconds, not {value!r}")


@dataclass(slots=True)
class Impairment:
    """Per-datagram probabilities for one direction."""

    drop: float = 0.0
    reorder: float = 0.0  # held back by `reorder_hold`, so later datagrams overtake it
    duplicate: float = 0.0
    delay: float = 0.0  # extra delay, uniform in (0, delay_max]
    corrupt: float = 0.0  # 1 to 3 bits flipped
    truncate: float = 0.0  # cut to a random shorter length (possibly empty)
    replay: float = 0.0  # also send a copy of an older datagram of this direction
    garbage: float = 0.0  # also send random bytes

    def validate(self, direction: str = "") -> None:
        for f in fields(self):
            _check_probability(f"{direction} {f.name}".strip(), getattr(self, f.name))

    @property
    def is_clean(self) -> bool:
        return not any(getattr(self, f.name) for f in fields(self))

    @classmethod
    def parse(cls, text: str, base: Impairment | None = None) -> Impairment:
        """`drop=0.2,reorder=0.1` → Impairment (unnamed fields from `base`); ConfigError if bad."""
        out = Impairment() if base is None else Impairment(**{
            f.name: getattr(base, f.name) for f in fields(base)
        })
        names = {f.name for f in fields(cls)}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in names:
                raise ConfigError(
                    f"bad impairment {item!r}: expected NAME=PROBABILITY with NAME one of "
                    + ", ".join(sorted(names))
                )
            try:
                setattr(out, key, float(value))
            except ValueError:
                raise ConfigError(f"bad impairment {item!r}: {value!r} is not a number") from None
        out.validate()
        return out


@dataclass(slots=True)
class RelayConfig:
    """Everything that decides what the relay does; identical configs give identical fates."""

    up: Impairment = field(default_factory=Impairment)
    down: Impairment = field(default_factory=Impairment)
    seed: int = 0
    #: One-way delay every datagram gets (seconds).
    latency: float = 0.0
    #: Upper bound of the extra delay of a "delay"-impaired datagram.
    delay_max: float = 0.2
    #: How long a "reorder"-impaired datagram is held back.
    reorder_hold: float = 0.05
    #: True: corrupt/truncate send a damaged *copy* besides the intact original (an attacker
    #: injecting forgeries). False: the damaged datagram replaces the original (a bad link).
    mutate_copies: bool = False
    #: Most datagrams held at once (both directions); beyond that they are dropped as overflow.
    max_pending: int = 4096
    #: Datagrams per direction remembered as replay material.
    history: int = 64
    #: Longest injected garbage datagram.
    garbage_max: int = 1500

    def validate(self) -> None:
        self.up.validate("up")
        self.down.validate("down")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, not {self.seed!r}")
        for name in ("latency", "delay_max", "reorder_hold"):
            _check_non_negative(name, getattr(self, name))
        for name in ("max_pending", "history", "garbage_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")

    def impairment(self, direction: int) -> Impairment:
        return self.up if direction == UP else self.down


@dataclass(slots=True)
class Counters:
    """What the relay did to one direction (every datagram it saw is accounted for)."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    reordered: int = 0
    duplicated: int = 0
    delayed: int = 0
    corrupted: int = 0
    truncated: int = 0
    replayed: int = 0
    injected: int = 0
    overflow: int = 0
    send_errors: int = 0

    def describe(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


def describe_counters(counters: Sequence[Counters]) -> str:
    """One line for both directions, e.g. for the relay's exit message."""
    return "; ".join(f"{DIRECTION_NAMES[d]}: {c.describe()}" for d, c in enumerate(counters))


class RelayCore:
    """The UDP relay's decisions, sans-IO (see the module docstring)."""

    def __init__(self, config: RelayConfig) -> None:
        config.validate()
        self.config = config
        self.counters = (Counters(), Counters())
        self._rng = (random.Random(config.seed * 2 + UP), random.Random(config.seed * 2 + DOWN))
        self._history: tuple[deque[bytes], deque[bytes]] = (
            deque(maxlen=config.history),
            deque(maxlen=config.history),
        )
        self._heap: list[tuple[float, int, int, bytes]] = []
        self._seq = 0

    @property
    def pending(self) -> int:
        """Datagrams held, waiting for their time."""
        return len(self._heap)

    def _schedule(self, direction: int, data: bytes, due: float) -> bool:
        if len(self._heap) >= self.config.max_pending:
            self.counters[direction].overflow += 1
            return False
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, direction, data))
        return True

    def receive_datagram(self, direction: int, data: bytes, now: float) -> None:
        """Decide the fate of one datagram travelling in `direction` at time `now`."""
        if direction not in (UP, DOWN):
            raise ValueError(f"direction must be UP or DOWN, not {direction!r}")
        cfg = self.config
        imp = cfg.impairment(direction)
        c = self.counters[direction]
        rng = self._rng[direction]
        u = [rng.random() for _ in range(_DRAWS)]
        # Details (which bits, how long, which old datagram) come from a per-datagram
        # generator, so they never shift the draws of later datagrams.
        detail = random.Random(rng.getrandbits(64))
        c.received += 1
        base = now + cfg.latency
        history = self._history[direction]
        if u[0] < imp.garbage:
            junk = detail.randbytes(detail.randint(1, cfg.garbage_max))
            if self._schedule(direction, junk, base):
                c.injected += 1
        if u[1] < imp.replay and history:
            old = history[detail.randrange(len(history))]
            if self._schedule(direction, old, base):
                c.replayed += 1
        history.append(data)
        if u[2] < imp.drop:
            c.dropped += 1
            return
        damaged = data
        if u[3] < imp.corrupt and damaged:
            buf = bytearray(damaged)
            for _ in range(detail.randint(1, 3)):
                bit = detail.randrange(len(buf) * 8)
                buf[bit >> 3] ^= 1 << (bit & 7)
            damaged = bytes(buf)
            c.corrupted += 1
        if u[4] < imp.truncate and damaged:
            damaged = damaged[: detail.randrange(len(damaged))]
            c.truncated += 1
        due = base
        if u[5] < imp.delay:
            due += detail.uniform(0.0, cfg.delay_max)
            c.delayed += 1
        if u[6] < imp.reorder:
            due += cfg.reorder_hold
            c.reordered += 1
        if damaged is not data and cfg.mutate_copies:
            self._schedule(direction, damaged, base)
            damaged = data
        self._schedule(direction, damaged, due)
        if u[7] < imp.duplicate and self._schedule(direction, damaged, due):
            c.duplicated += 1

    def get_timer(self) -> float | None:
        """When the next held datagram is due, or None when nothing is held."""
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> list[tuple[int, bytes]]:
        """Same as `datagrams_to_send`: time passing only ever releases datagrams."""
        return self.datagrams_to_send(now)

    def datagrams_to_send(self, now: float) -> list[tuple[int, bytes]]:
        """Every (direction, datagram) due by `now`, in due order (FIFO among equals)."""
        out: list[tuple[int, bytes]] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _due, _seq, direction, data = heapq.heappop(heap)
            self.counters[direction].sent += 1
            out.append((direction, data))
        return out


# ---------------------------------------------------------------------------------------
# TCP


@dataclass(slots=True)
class TCPImpairment:
    """Per-chunk (per `recv` result) probabilities for one TCP connection, both directions."""

    stall: float = 0.0  # forwarding in this direction pauses for `stall_time`
    stall_time: float = 1.0
    cut: float = 0.0  # both sides of the connection are closed at once
    split: float = 0.0  # the chunk is forwarded as several small writes
    #: Bytes a direction may buffer before the relay stops reading from its source.
    max_buffer: int = 256 * 1024

    def validate(self) -> None:
        for name in ("stall", "cut", "split"):
            _check_probability(name, getattr(self, name))
        _check_non_negative("stall_time", self.stall_time)
        if not isinstance(self.max_buffer, int) or self.max_buffer < 1:
            raise ConfigError(f"max_buffer must be a positive integer, not {self.max_buffer!r}")


@dataclass(slots=True)
class TCPCounters:
    """What the relay did to one TCP connection (or, summed, to all of them)."""

    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    chunks: int = 0
    stalls: int = 0
    splits: int = 0
    cuts: int = 0

    def describe(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


class TCPRelayCore:
    """Decisions for one relayed TCP connection, sans-IO."""

    def __init__(self, impairment: TCPImpairment, seed: int) -> None:
        impairment.validate()
        self.impairment = impairment
        self.counters = TCPCounters(connections=1)
        self._rng = random.Random(seed)
        self._queues: tuple[deque[bytes], deque[bytes]] = (deque(), deque())
        self._buffered = [0, 0]
        self._stalled_until = [-math.inf, -math.inf]
        #: Set once the connection is cut; the service then closes both sides.
        self.cut = False

    def can_receive(self, direction: int) -> bool:
        """False while `direction` buffers `max_buffer` bytes or more (backpressure)."""
        return not self.cut and self._buffered[direction] < self.impairment.max_buffer

    def receive_bytes(self, direction: int, data: bytes, now: float) -> None:
        """A chunk read from the source side of `direction`."""
        if self.cut or not data:
            return
        imp = self.impairment
        u = [self._rng.random() for _ in range(3)]
        detail = random.Random(self._rng.getrandbits(64))
        c = self.counters
        c.chunks += 1
        if direction == UP:
            c.bytes_up += len(data)
        else:
            c.bytes_down += len(data)
        if u[0] < imp.cut:
            self.cut = True
            c.cuts += 1
            return
        if u[1] < imp.stall:
            self._stalled_until[direction] = max(self._stalled_until[direction], now) + imp.stall_time
            c.stalls += 1
        queue = self._queues[direction]
        if u[2] < imp.split and len(data) > 1:
            c.splits += 1
            pos = 0
            while pos < len(data):
                n = detail.randint(1, max(1, min(64, len(data) - pos)))
                queue.append(data[pos : pos + n])
                pos += n
        else:
            queue.append(data)
        self._buffered[direction] += len(data)

    def chunks_to_send(self, direction: int, now: float) -> list[bytes]:
        """Chunks to write towards the destination of `direction` now (none while stalled)."""
        if self.cut or now < self._stalled_until[direction]:
            return []
        queue = self._queues[direction]
        out = list(queue)
        queue.clear()
        self._buffered[direction] = 0
        return out

    def get_timer(self, direction: int) -> float | None:
        """When a stalled direction with data waiting may flow again."""
        if self._queues[direction] and not self.cut:
            return self._stalled_until[direction]
        return None


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
