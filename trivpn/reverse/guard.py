"""What the relay lets unproven sources do (pure, sans-IO; time enters as `now`).

Theory of operation
-------------------
A relay faces the internet, and before a connection has authenticated (tunnel port) or
sent its request head (name-routed port) it costs a file descriptor and a task while
proving nothing. `PendingTable` bounds such connections, `SourceGuard` adds failed logins:

* *sources*: an IPv4 address, or an IPv6 /64 (`source_key`): one host usually holds a
  whole /64, so counting its addresses one by one would let it take every slot alone;
* *pending connections*: at most `total` in all and `per_source` per source. A newcomer
  over its source's share is refused. When the table is full, the oldest connection of
  the most-represented source is evicted for the newcomer if that source holds at least
  two more than the newcomer's would; otherwise the newcomer is refused. Idle holders
  are by nature the oldest (a real client authenticates or sends its head within a few
  round trips), and a crowd of sources each at its share can no longer lock out a source
  with fewer: each source keeps a fair share of a full table;
* *failed logins*: each source has a window of `failure_window` seconds; after
  `max_failures` wrong tokens within it, its new connections are refused until the window
  ends. `login_failed()` says whether to log the failure, so a guessing source writes at
  most `max_failures` + 1 log lines per window.

All tables are bounded: pending ones by `total` (a source's entry goes at zero), the
failure table by `max_sources` (least recently failed evicted first), so a spoofed or
spread-out flood cannot grow them. Finding the most-represented source scans the sources
(at most `total`), only when the table is full.

`LogBudget` rate-limits one kind of log line (refusals under a flood): one line, then a
count of the suppressed ones per interval.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Protocol

from trivpn.records import dataclass


def source_key(host: str) -> str:
    """What per-source limits count: an IPv4 address as is, an IPv6 one by its /64
    (IPv4-mapped IPv6 as the IPv4 address); anything else unchanged."""
    if ":" not in host:
        return host
    try:
        addr = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))


class Evictable(Protocol):
    """A pending connection's handle: `evict` ends it (the table already counted it out)."""

    def evict(self) -> None: ...


class _Counted:
    """The handle of a caller that only counts (evicting it closes nothing)."""

    __slots__ = ()

    def evict(self) -> None:
        pass


class PendingTable:
    """Unproven connections per source, oldest first; see the module docstring."""

    __slots__ = ("total", "per_source", "what", "count", "evicted", "_by_source")

    def __init__(self, total: int, per_source: int, what: str = "unproven connections") -> None:
        self.total = total
        self.what = what  # for the refusal
        self.per_source = per_source
        self.count = 0
        self.evicted = 0  # connections evicted for a newcomer, ever
        # source key -> its connections (a dict keeps them oldest first)
        self._by_source: dict[str, dict[Evictable, None]] = {}

    def held_by(self, key: str) -> int:
        return len(self._by_source.get(key, ()))

    @property
    def sources(self) -> int:
        return len(self._by_source)

    def admit(self, key: str, holder: Evictable) -> str | None:
        """Count `holder` in (evicting another if fair), or say why it is refused."""
        mine = self._by_source.get(key)
        n = len(mine) if mine is not None else 0
        if n >= self.per_source:
            return f"{n} {self.what} from this source already"
        if self.count >= self.total:
            if not self._by_source:
                return f"{self.total} {self.what} already"
            top_key, top = max(self._by_source.items(), key=lambda kv: len(kv[1]))
            if len(top) <= n + 1:
                return f"{self.count} {self.what} already"
            oldest = next(iter(top))
            self.remove(top_key, oldest)
            self.evicted += 1
            oldest.evict()
            mine = self._by_source.get(key)
        if mine is None:
            mine = self._by_source[key] = {}
        mine[holder] = None
        self.count += 1
        return None

    def remove(self, key: str, holder: Evictable | None = None) -> bool:
        """Count a connection out (`holder`, or any of the source's); False: not counted."""
        mine = self._by_source.get(key)
        if not mine:
            return False
        if holder is None:
            holder = next(iter(mine))
        elif holder not in mine:
            return False
        del mine[holder]
        if not mine:
            del self._by_source[key]
        self.count -= 1
        return True


class LogBudget:
    """One kind of log line under a flood: `allow` says whether to write this one; the
    others within `interval` seconds are counted, and `due` hands the count over once the
    interval has passed (a periodic task logs it), so a flood writes one line, then at
    most one per interval, each saying how many it stands for."""

    __slots__ = ("interval", "suppressed", "_last")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.suppressed = 0
        self._last = float("-inf")

    def allow(self, now: float) -> bool:
        if self.suppressed == 0 and now - self._last >= self.interval:
            self._last = now
            return True
        self.suppressed += 1
        return False

    def due(self, now: float) -> int:
        """Lines suppressed since the last one, once `interval` has passed (then reset)."""
        if self.suppressed == 0 or now - self._last < self.interval:
            return 0
        n, self.suppressed, self._last = self.suppressed, 0, now
        return n


@dataclass(slots=True)
class GuardConfig:
    max_pre_auth: int = 512
    max_pre_auth_per_source: int = 32
    max_failures: int = 5
    failure_window: float = 60.0
    max_sources: int = 4096


class SourceGuard:
    __slots__ = ("config", "table", "_failures")

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        cfg = self.config
        self.table = PendingTable(
            cfg.max_pre_auth, cfg.max_pre_auth_per_source, "unauthenticated connections"
        )
        # source -> (window start, failures in it); least recently failed first
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    @property
    def pre_auth(self) -> int:
        return self.table.count

    @property
    def failure_sources(self) -> int:
        return len(self._failures)

    def _blocked_until(self, key: str, now: float) -> float | None:
        entry = self._failures.get(key)
        if entry is None:
            return None
        start, count = entry
        end = start + self.config.failure_window
        if now >= end:
            del self._failures[key]
            return None
        return end if count >= self.config.max_failures else None

    def admit(self, source: str, now: float, holder: Evictable | None = None) -> str | None:
        """Count a new connection in, or say why it is refused (then it is not counted).
        Admitting it may evict the oldest of another source (`holder.evict()`)."""
        key = source_key(source)
        until = self._blocked_until(key, now)
        if until is not None:
            return f"too many failed logins, refused for {until - now:.0f} s"
        return self.table.admit(key, holder if holder is not None else _Counted())

    def authenticated(self, source: str, holder: Evictable | None = None) -> None:
        """The connection proved the token: it no longer counts as pre-auth."""
        self.left(source, holder)

    def left(self, source: str, holder: Evictable | None = None) -> None:
        """An admitted connection ended before authenticating (evicted ones are no-ops)."""
        self.table.remove(source_key(source), holder)

    def login_failed(self, source: str, now: float) -> int:
        """Record a wrong token; the source's failures in its window (log up to the max)."""
        cfg = self.config
        source = source_key(source)
        entry = self._failures.pop(source, None)
        if entry is None or now >= entry[0] + cfg.failure_window:
            entry = (now, 0)
        start, count = entry[0], entry[1] + 1
        self._failures[source] = (start, count)  # now the most recent
        while len(self._failures) > cfg.max_sources:
            self._failures.popitem(last=False)
        return count
