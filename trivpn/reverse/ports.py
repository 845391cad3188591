"""Relay port leases, per-client port quotas and the client's reconnect backoff (all pure).

Ports: an authenticated client (token name + the random client id it keeps across
reconnects) owns one port per *slot* (one slot per tunnel it asked for in BIND; a
single-tunnel client has only slot 0). When its session ends the port is not freed at once
but *leased* to that client for `lease` seconds, so a client that reconnects within the
lease gets the same public port back; anyone else gets it only after the lease expired.
A session that never carried a stream on a port is not worth reserving for long: that
port's lease is only `idle_lease` (a few seconds, enough for an honest quick reconnect),
so throw-away logins cannot park the whole range. If the owner reconnects while its old
session is still alive (a half-dead connection kept open by a middlebox), the new session
takes over: the caller ends the old one first. Allocation picks the lowest port that is
neither in use nor leased.

Quota: the ports held under one token name (in use or leased, by all its client ids)
never exceed that name's quota (`quotas`, else `default_quota`). A new port beyond the
quota first evicts that name's oldest lease (a port nobody uses now); if every port of
the name is in use, the bind is refused. One token cannot take more than its share of the
range, whatever the number of client ids it makes up.

Backoff: 1 s doubling to 30 s, at most `attempts` tries (0 = forever), with ±20 % jitter
so a fleet of clients does not reconnect in lock-step after a relay restart.
"""

from __future__ import annotations

from dataclasses import field

from trivpn.records import dataclass

Owner = tuple[str, bytes]

DEFAULT_PORT_QUOTA = 4
IDLE_LEASE = 5.0


class PortUnavailable(Exception):
    """The requested port cannot be given (the message says why, for BIND_ERR)."""


@dataclass(slots=True)
class _Lease:
    owner: Owner
    slot: int
    expires: float | None  # None while a session uses the port


@dataclass(slots=True)
class PortAllocator:
    start: int
    end: int
    lease: float = 60.0
    idle_lease: float = IDLE_LEASE
    default_quota: int = DEFAULT_PORT_QUOTA
    quotas: dict[str, int] = field(default_factory=dict)
    _ports: dict[int, _Lease] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.start <= self.end <= 65535:
            raise ValueError(f"bad port range {self.start}-{self.end}")
        if self.default_quota < 1 or any(q < 1 for q in self.quotas.values()):
            raise ValueError("a port quota must be at least 1")

    def _expire(self, now: float) -> None:
        gone = [p for p, le in self._ports.items() if le.expires is not None and le.expires <= now]
        for p in gone:
            del self._ports[p]

    def quota(self, name: str) -> int:
        return self.quotas.get(name, self.default_quota)

    def held(self, name: str, now: float) -> list[int]:
        """Ports in use by or leased to clients of this token name."""
        self._expire(now)
        return sorted(p for p, le in self._ports.items() if le.owner[0] == name)

    def leased(self, now: float) -> list[int]:
        """Ports reserved for a client that has no session on them now."""
        self._expire(now)
        return sorted(p for p, le in self._ports.items() if le.expires is not None)

    def port_of(self, owner: Owner, slot: int = 0) -> int | None:
        for p, le in self._ports.items():
            if le.owner == owner and le.slot == slot:
                return p
        return None

    def in_use(self, port: int) -> bool:
        le = self._ports.get(port)
        return le is not None and le.expires is None

    def assign(
        self,
        owner: Owner,
        requested: int,
        now: float,
        exclude: frozenset[int] = frozenset(),
        slot: int = 0,
    ) -> tuple[int, bool]:
        """(port, takeover): takeover means the owner's previous session still holds it."""
        self._expire(now)
        mine = self.port_of(owner, slot)
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
        self._make_room(owner[0], mine)
        if mine is not None:
            del self._ports[mine]
        if requested:
            self._ports[requested] = _Lease(owner, slot, None)
            return requested, False
        for p in range(self.start, self.end + 1):
            if p not in self._ports and p not in exclude:
                self._ports[p] = _Lease(owner, slot, None)
                return p, False
        raise PortUnavailable(f"all ports {self.start}-{self.end} are in use")

    def _make_room(self, name: str, replacing: int | None) -> None:
        """Make room for one more port of `name` (`replacing` goes anyway): evict its
        oldest leases, or refuse when its ports in use alone fill the quota."""
        mine = [(p, le) for p, le in self._ports.items() if le.owner[0] == name and p != replacing]
        quota = self.quota(name)
        if len(mine) < quota:
            return
        idle = sorted((le.expires, p) for p, le in mine if le.expires is not None)
        if len(mine) - len(idle) >= quota:
            raise PortUnavailable(f"client {name} already uses its quota of {quota} port(s)")
        for _, p in idle[: len(mine) - quota + 1]:
            del self._ports[p]

    def release(self, port: int, owner: Owner, now: float, *, used: bool = True) -> float:
        """The session using `port` ended: keep the port for its owner for a while.

        `used` says whether any stream went through it; an unused port gets only
        `idle_lease`. Returns how long the port stays reserved.
        """
        le = self._ports.get(port)
        if le is None or le.owner != owner or le.expires is not None:
            return 0.0
        keep = self.lease if used else min(self.lease, self.idle_lease)
        le.expires = now + keep
        return keep

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
