"""The reconnect policy: which remote to try next, and after how long (pure).

Theory of operation
-------------------
A client run is a sequence of attempts. `ReconnectPolicy.first()` names the first one; after
each attempt the caller reports how it ended (`SessionEnd`) and `ended(end, now)` answers
with a decision: `Retry` (wait `delay` seconds, then try `candidate`) or `GiveUp` (end the
run with `message`, or with the session's own error when `reraise`). The policy never sleeps
and never reads a clock (`now` is passed in) and its randomness comes from an injected
`random.Random`, so every rule below is property-tested without trio:

* **candidates**: every remote of every `<connection>` block, in order; shuffled once with
  `remote-random`;
* **rotation**: after an attempt that brought no tunnel, the next candidate; after a tunnel
  had been up, the same one again, unless the server asked us to move on (`RESTART,[N]`);
* **backoff**: connect-retry's first delay, doubling per consecutive failure up to its cap,
  with ±20 % jitter; a session that came up resets it;
* **connect-retry-max**: once every candidate has been tried that many times, the run ends
  (checked after an attempt without a tunnel);
* **resolv-retry**: name resolution failing for that long ends the run;
* **give_up_after**: a client that never had a tunnel gives up when the next attempt would
  start after that many seconds;
* **no_reconnect**: the first session error ends the run (re-raised as it is).

Which errors are worth another attempt is `restart_cause`'s question: everything the network
or the server can cause (lost or corrupt transport, TLS failures, malformed or unusable
pushes, timeouts) is; only what the user has to fix (the profile, refused credentials,
HALT, ping-exit, the limits above) ends the run. docs/security.md has the full list.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from trivpn.errors import ConfigError, RemoteProtocolError, SessionRestart
from trivpn.profile.profile import Profile, Remote
from trivpn.records import dataclass
from trivpn.session.config import ConnectionConfig, SessionConfig

__all__ = [
    "Candidate",
    "GiveUp",
    "PeerError",
    "ReconnectPolicy",
    "Retry",
    "SessionEnd",
    "backoff_delay",
    "candidates",
    "restart_cause",
]

#: ± this fraction of jitter on every backoff delay
JITTER = 0.2
#: backoff stops doubling after this many failures (any cap is reached long before)
MAX_DOUBLINGS = 64


@dataclass(frozen=True, slots=True, eq=False)
class Candidate:
    """One place to connect to: a remote, with the <connection> block it came from."""

    connection: ConnectionConfig
    remote: Remote

    @property
    def profile(self) -> Profile:
        """The block's profile (proxy and bind options for the transport)."""
        return self.connection.profile


def candidates(
    connections: Sequence[ConnectionConfig], rng: random.Random, *, shuffle: bool = False
) -> list[Candidate]:
    """Remotes in the order they are tried: every remote of every <connection> block."""
    out = [Candidate(c, r) for c in connections for r in c.remotes]
    if shuffle:
        rng.shuffle(out)
    return out


def backoff_delay(failures: int, first: float, cap: float, rng: random.Random) -> float:
    """`first` doubling per consecutive failure up to `cap`, with ±20 % jitter (so many
    clients cut off together do not come back in step)."""
    # the exponent is bounded: a client retrying for days must not overflow a float
    base = min(cap, first * 2.0 ** min(max(0, failures - 1), MAX_DOUBLINGS))
    return max(0.0, base * rng.uniform(1 - JITTER, 1 + JITTER))


class PeerError(SessionRestart):
    """Bytes from the network were refused in a way that ends the session (a decode error
    an attacker on the path can cause): reconnect, as for a lost connection."""


def restart_cause(exc: BaseException) -> SessionRestart | None:
    """The `SessionRestart` to reconnect after, or None when `exc` must end the run.

    Never fail open: an error the network can cause must not end the run, because the run's
    end takes the TUN and its routes away and the traffic then leaves unprotected.
    `RemoteProtocolError` (hostile or corrupt input) is therefore a restart wherever a layer
    lets it escape; `FatalError`, `ConfigError` and bugs end the run."""
    if isinstance(exc, SessionRestart):
        return exc
    if isinstance(exc, RemoteProtocolError):
        err = PeerError(f"refused input from the network: {exc}")
        err.__cause__ = exc
        return err
    return None


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """How one attempt ended, as far as the policy cares."""

    #: a tunnel was up during this attempt
    came_up: bool
    reason: str = "the session ended"
    #: it ended with a session error (not quietly)
    failed: bool = False
    #: the server asked for the next remote (RESTART,[N])
    advance: bool = False
    #: the remote's name did not resolve
    unresolved: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class Retry:
    """Wait `delay` seconds, then try `candidate` (`first()` is a Retry without delay)."""

    candidate: Candidate
    #: earlier attempts at this candidate (UDP rotates through the name's addresses with it)
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """End the run: with `FatalError(message)`, or the session's own error when `reraise`."""

    message: str
    reraise: bool = False
    #: no tunnel within give_up_after (raised as ConnectTimeout, else RetryLimitReached)
    timeout: bool = False


class ReconnectPolicy:
    """Decides every attempt of one client run; see the module docstring for the rules."""

    def __init__(
        self,
        cands: Sequence[Candidate],
        *,
        rng: random.Random,
        now: float,
        resolv_retry: float | None = None,
        no_reconnect: bool = False,
        give_up_after: float | None = None,
    ) -> None:
        if not cands:
            raise ConfigError("the profile has no remote to connect to")
        self.candidates = list(cands)
        self._rng = rng
        self._started_at = now
        self.resolv_retry = resolv_retry
        self.no_reconnect = no_reconnect
        self.give_up_after = give_up_after
        #: attempts made at each candidate
        self.tries = [0] * len(self.candidates)
        self._index = 0
        #: consecutive attempts without a tunnel
        self.failures = 0
        self.ever_up = False
        self._unresolved_since: float | None = None

    @classmethod
    def for_config(cls, config: SessionConfig, rng: random.Random, now: float) -> ReconnectPolicy:
        cands = candidates(config.connections, rng, shuffle=config.remote_random)
        return cls(
            cands,
            rng=rng,
            now=now,
            resolv_retry=config.resolv_retry,
            no_reconnect=config.no_reconnect,
            give_up_after=config.give_up_after,
        )

    def _attempt(self, delay: float, reason: str) -> Retry:
        self.tries[self._index] += 1
        return Retry(self.candidates[self._index], self.tries[self._index] - 1, delay, reason)

    def first(self) -> Retry:
        """The first attempt (no delay)."""
        return self._attempt(0.0, "first attempt")

    def ended(self, end: SessionEnd, now: float) -> Retry | GiveUp:
        """The attempt from the last decision ended; what next."""
        if end.failed and self.no_reconnect:
            return GiveUp(end.reason, reraise=True)
        cand = self.candidates[self._index]
        if end.failed and end.unresolved:
            self._unresolved_since = self._unresolved_since or now
            limit_s = self.resolv_retry
            if limit_s is not None and now - self._unresolved_since >= limit_s:
                return GiveUp(f"{end.reason} (gave up after resolv-retry {limit_s:g} s)")
        elif end.failed:
            self._unresolved_since = None
        if end.came_up:
            self.ever_up = True
            self.failures = 0
            if end.advance:
                self._next()
        else:
            self.failures += 1
            self._next()
            limit = cand.connection.connect_retry_max
            if limit and all(t >= limit for t in self.tries):
                return GiveUp(
                    f"giving up after {limit} attempt(s) at each remote (connect-retry-max): {end.reason}"
                )
        first, cap = cand.connection.connect_retry
        delay = backoff_delay(max(self.failures, 1), first, cap, self._rng)
        if not self.ever_up and self.give_up_after is not None:
            if now + delay >= self._started_at + self.give_up_after:
                return GiveUp(f"no tunnel within {self.give_up_after:g} s: {end.reason}", timeout=True)
        return self._attempt(delay, end.reason)

    def give_up_at(self) -> float | None:
        """When the run gives up if no tunnel has come up by then (`give_up_after`, counted
        from the start): an attempt must end by then too, not run its whole connect window
        (60 s by default) first. None once a tunnel was up, or without a limit."""
        if self.ever_up or self.give_up_after is None:
            return None
        return self._started_at + self.give_up_after

    def _next(self) -> None:
        self._index = (self._index + 1) % len(self.candidates)
