"""Token bucket for per-client bandwidth limits (pure: `now` is passed in).

Theory of operation
-------------------
The bucket holds up to `burst` bytes of allowance and refills at `rate` bytes per second.
A sender does not ask first and then send (that would need the size of a read before
making it); it sends, then *charges* what it sent with `charge(n, now)`. The allowance
may go negative — a debt — and `charge` returns how long the sender must pause before it
sends again: the time the refill needs to pay the debt back. A sender that honours every
pause has, by any time t, sent at most

    burst + rate * (t - t0) + (the last charge)

bytes, and never waits longer than that debt requires, so over a transfer of B bytes the
elapsed time lies between (B - burst - largest charge) / rate and (B - burst) / rate plus
the sender's own overheads. Many streams of one client share one bucket per direction,
so the limit is per client, not per stream; each direction has its own bucket.
"""

from __future__ import annotations

import re
from dataclasses import field

from trivpn.records import dataclass

MIN_RATE = 1024.0  # bytes/s; below this a limit is a mistake, not a policy
MIN_BURST = 64 * 1024  # a read or a frame fits; smaller bursts only add pauses

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "kbit": 1000 / 8,
    "mbit": 1000**2 / 8,
    "gbit": 1000**3 / 8,
}
_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*(?:/\s*s)?\s*", re.IGNORECASE)


def parse_rate(value: str | int | float) -> float:
    """A rate in bytes per second from `2 MiB/s`, `500 KB/s`, `100 Mbit/s` or a number.

    Raises ValueError with a short reason.
    """
    if isinstance(value, bool):
        raise ValueError("expected a rate such as 2 MiB/s or a number of bytes per second")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        m = _RATE.fullmatch(value)
        unit = m.group(2).lower() if m else ""
        if m is None or unit not in _UNITS:
            raise ValueError(f"cannot read {value!r} as a rate (e.g. 2 MiB/s, 100 Mbit/s)")
        rate = float(m.group(1)) * _UNITS[unit]
    if not MIN_RATE <= rate <= 1e12:
        raise ValueError(f"a rate must be between {MIN_RATE:g} B/s and 1 TB/s")
    return rate


@dataclass(slots=True)
class TokenBucket:
    """`rate` bytes/s with up to `burst` bytes saved up; see the module docstring."""

    rate: float
    burst: float
    now: float
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.tokens = self.burst
        self.stamp = self.now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def charge(self, n: int, now: float) -> float:
        """Account for `n` bytes just sent; the seconds to pause before sending more."""
        self._refill(now)
        self.tokens -= n
        return self.wait(now)

    def wait(self, now: float) -> float:
        """Seconds until the allowance is no longer negative (0.0: send now).

        A debt below one byte is float rounding from the refill, not a reason to pause."""
        self._refill(now)
        return 0.0 if self.tokens > -1.0 else -self.tokens / self.rate


@dataclass(slots=True)
class Shaper:
    """One client's pair of buckets: `up` (public side -> client) and `down` (back)."""

    up: TokenBucket
    down: TokenBucket

    @classmethod
    def for_rate(cls, rate: float, now: float) -> Shaper:
        burst = max(float(MIN_BURST), rate / 8)  # an eighth of a second saved up, at most
        return cls(TokenBucket(rate, burst, now), TokenBucket(rate, burst, now))
