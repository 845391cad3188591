"""What the relay lets unauthenticated sources do (pure, sans-IO; time enters as `now`).

Theory of operation
-------------------
A relay faces the internet, and before a connection has authenticated it costs a file
descriptor and a task while proving nothing. `SourceGuard` bounds that:

* *pre-auth connections*: at most `max_pre_auth` in total and `max_pre_auth_per_source`
  per source address; `admit()` counts one in, `authenticated()` or `left()` counts it out
  (exactly one of them per admitted connection);
* *failed logins*: each source has a window of `failure_window` seconds; after
  `max_failures` wrong tokens within it, its new connections are refused until the window
  ends. `login_failed()` says whether to log the failure, so a guessing source writes at
  most `max_failures` + 1 log lines per window.

Both tables are bounded: the pre-auth counts by `max_pre_auth` (an entry goes at zero), the
failure table by `max_sources` (least recently failed evicted first), so a spoofed or
spread-out flood cannot grow them.
"""

from __future__ import annotations

from collections import OrderedDict

from trivpn.records import dataclass


@dataclass(slots=True)
class GuardConfig:
    max_pre_auth: int = 512
    max_pre_auth_per_source: int = 32
    max_failures: int = 5
    failure_window: float = 60.0
    max_sources: int = 4096


class SourceGuard:
    __slots__ = ("config", "pre_auth", "_per_source", "_failures")

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self.pre_auth = 0
        self._per_source: dict[str, int] = {}
        # source -> (window start, failures in it); least recently failed first
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    @property
    def failure_sources(self) -> int:
        return len(self._failures)

    def _blocked_until(self, source: str, now: float) -> float | None:
        entry = self._failures.get(source)
        if entry is None:
            return None
        start, count = entry
        end = start + self.config.failure_window
        if now >= end:
            del self._failures[source]
            return None
        return end if count >= self.config.max_failures else None

    def admit(self, source: str, now: float) -> str | None:
        """Count a new connection in, or say why it is refused (then it is not counted)."""
        cfg = self.config
        until = self._blocked_until(source, now)
        if until is not None:
            return f"too many failed logins, refused for {until - now:.0f} s"
        if self.pre_auth >= cfg.max_pre_auth:
            return f"{cfg.max_pre_auth} unauthenticated connections already"
        n = self._per_source.get(source, 0)
        if n >= cfg.max_pre_auth_per_source:
            return f"{n} unauthenticated connections from this address already"
        self._per_source[source] = n + 1
        self.pre_auth += 1
        return None

    def authenticated(self, source: str) -> None:
        """The connection proved the token: it no longer counts as pre-auth."""
        self.left(source)

    def left(self, source: str) -> None:
        """An admitted connection ended before authenticating."""
        n = self._per_source.get(source, 0)
        if n <= 0:
            return
        self.pre_auth -= 1
        if n == 1:
            del self._per_source[source]
        else:
            self._per_source[source] = n - 1

    def login_failed(self, source: str, now: float) -> int:
        """Record a wrong token; the source's failures in its window (log up to the max)."""
        cfg = self.config
        entry = self._failures.pop(source, None)
        if entry is None or now >= entry[0] + cfg.failure_window:
            entry = (now, 0)
        start, count = entry[0], entry[1] + 1
        self._failures[source] = (start, count)  # now the most recent
        while len(self._failures) > cfg.max_sources:
            self._failures.popitem(last=False)
        return count
