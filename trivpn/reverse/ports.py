"""Relay port leases and the client's reconnect backoff (both pure).

Ports: each authenticated client (token name + the random client id it keeps across
reconnects) owns at most one port. When its session ends the port is not freed at once
but *leased* to that client for `lease` seconds, so a client that reconnects within the
lease gets the same public port back; anyone else gets it only after the lease expired.
If the owner reconnects while its old session is still alive (a half-dead connection kept
open by a middlebox), the new session takes over: the caller ends the old one first.
Ports are always reused: allocation picks the lowest port that is neither in use nor leased.

Backoff: 1 s doubling to 30 s, at most `attempts` tries (0 = forever), with ±20 % jitter
so a fleet of clients does not reconnect in lock-step after a relay restart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Owner = tuple[str, bytes]


class PortUnavailable(Exception):
    """The requested port cannot be given (the message says why, for BIND_ERR)."""


@dataclass(slots=True)
class _Lease:
    owner: Owner
    expires: float | None  # None while a session uses the port


@dataclass(slots=True)
class PortAllocator:
    start: int
    end: int
    lease: float = 60.0
    _ports: dict[int, _Lease] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.start <= self.end <= 65535:
            raise ValueError(f"bad port range {self.start}-{self.end}")

    def _expire(self, now: float) -> None:
        gone = [p for p, le in self._ports.items() if le.expires is not None and le.expires <= now]
        for p in gone:
            del self._ports[p]

    def port_of(self, owner: Owner) -> int | None:
        for p, le in self._ports.items():
            if le.owner == owner:
                return p
        return None

    def in_use(self, port: int) -> bool:
        le = self._ports.get(port)
        return le is not None and le.expires is None

    def assign(
        self, owner: Owner, requested: int, now: float, exclude: frozenset[int] = frozenset()
    ) -> tuple[int, bool]:
        """(port, takeover): takeover means the owner's previous session still holds it."""
        self._expire(now)
        mine = self.port_of(owner)
        if mine is not None and requested in (0, mine) and mine not in exclude:
            le = self._ports[mine]
            takeover = le.expires is None
            le.expires = None
            return mine, takeover
        if requested:
            if not self.start <= requested <= self.end:
                raise PortUnavailable(f"port {requested} is outside {self.start}-{self.end}")
            if requested in self._ports or requested in exclude:
                raise PortUnavailable(f"port {requested} is in use or leased to another client")
            if mine is not None:
                del self._ports[mine]
            self._ports[requested] = _Lease(owner, None)
            return requested, False
        if mine is not None:
            del self._ports[mine]
        for p in range(self.start, self.end + 1):
            if p not in self._ports and p not in exclude:
                self._ports[p] = _Lease(owner, None)
                return p, False
        raise PortUnavailable(f"all ports {self.start}-{self.end} are in use")

    def release(self, port: int, owner: Owner, now: float) -> None:
        """The session using `port` ended: keep the port for its owner until the lease runs out."""
        le = self._ports.get(port)
        if le is not None and le.owner == owner and le.expires is None:
            le.expires = now + self.lease

    def forget(self, port: int) -> None:
        """Free a port at once (the listener could not be opened, say)."""
        self._ports.pop(port, None)


@dataclass(slots=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 30.0
    attempts: int = 10  # 0 = retry forever
    jitter: float = 0.2
    failures: int = 0

    def next_delay(self, rand: float) -> float | None:
        """Seconds to wait before the next try (`rand` uniform in [0, 1)), or None: give up."""
        if self.attempts and self.failures >= self.attempts:
            return None
        base = min(self.initial * (1 << min(self.failures, 30)), self.maximum)
        self.failures += 1
        return base * (1.0 - self.jitter + 2.0 * self.jitter * rand)

    def reset(self) -> None:
        self.failures = 0
