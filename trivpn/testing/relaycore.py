"""The impairment relay's pure cores: `RelayCore` (UDP) and `TCPRelayCore`.

Sans-IO and seeded (see `trivpn.testing.relay` for the theory of operation and the trio
services that own the sockets): kept in their own module so the in-memory two-ended harness
and the property tests can impair a link without importing any socket code.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import field, fields

from trivpn.errors import ConfigError
from trivpn.records import dataclass

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
