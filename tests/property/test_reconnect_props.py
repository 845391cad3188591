"""Properties of the reconnect policy: backoff bounds, rotation, retry limits, resets."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from trivpn.profile.profile import Profile, Remote
from trivpn.session.config import ConnectionConfig
from trivpn.session.reconnect import (
    GiveUp,
    ReconnectPolicy,
    Retry,
    SessionEnd,
    backoff_delay,
    candidates,
)

seeds = st.integers(0, 2**32 - 1)
retry = st.tuples(st.integers(1, 60), st.integers(0, 600)).map(lambda t: (t[0], t[0] + t[1]))
FAILED = SessionEnd(came_up=False, reason="no answer", failed=True)

ends = st.builds(
    SessionEnd,
    came_up=st.booleans(),
    reason=st.just("ended"),
    failed=st.booleans(),
    advance=st.booleans(),
    unresolved=st.just(False),
)


def make_policy(
    n: int, seed: int, first_cap: tuple[int, int] = (1, 30), retry_max: int | None = None
) -> ReconnectPolicy:
    profile = Profile(
        remotes=[Remote(f"r{i}", 1194, "udp") for i in range(n)],
        connect_retry=first_cap,
        connect_retry_max=retry_max,
    )
    conn = ConnectionConfig.from_profile(profile, 60.0)
    rng = random.Random(seed)
    return ReconnectPolicy(candidates([conn], rng, shuffle=True), rng=rng, now=0.0)


def index(p: ReconnectPolicy, d: Retry) -> int:
    return p.candidates.index(d.candidate)


@given(st.integers(1, 10_000), retry, seeds)
def test_backoff_stays_within_jitter_of_its_base_and_below_the_cap(failures: int, fc: tuple[int, int], seed: int) -> None:
    first, cap = fc
    base = min(cap, first * 2 ** min(failures - 1, 64))
    delay = backoff_delay(failures, first, cap, random.Random(seed))
    assert 0.8 * base <= delay <= 1.2 * base
    assert delay <= 1.2 * cap


@given(st.integers(1, 12), seeds, st.lists(ends, max_size=30))
def test_rotation_visits_every_remote(n: int, seed: int, history: list[SessionEnd]) -> None:
    """Whatever happened before, n failures in a row try each of the n remotes once."""
    p = make_policy(n, seed)
    p.first()
    for end in history:
        assert isinstance(p.ended(end, 0.0), Retry)
    visited = set()
    for _ in range(n):
        d = p.ended(FAILED, 0.0)
        assert isinstance(d, Retry)
        visited.add(index(p, d))
    assert visited == set(range(n))


@given(st.integers(1, 8), st.integers(1, 5), seeds)
def test_connect_retry_max_ends_the_run_after_exactly_the_allowed_attempts(n: int, limit: int, seed: int) -> None:
    p = make_policy(n, seed, retry_max=limit)
    p.first()
    attempts = 1
    while True:
        d = p.ended(FAILED, 0.0)
        if isinstance(d, GiveUp):
            break
        attempts += 1
        assert attempts <= n * limit
    assert attempts == n * limit
    assert "connect-retry-max" in d.message and not d.reraise


@given(st.integers(1, 6), retry, seeds, st.integers(0, 80))
def test_a_session_that_came_up_resets_the_backoff(n: int, fc: tuple[int, int], seed: int, failures: int) -> None:
    first, _ = fc
    p = make_policy(n, seed, fc)
    p.first()
    for _ in range(failures):
        p.ended(FAILED, 0.0)
    after_up = p.ended(SessionEnd(came_up=True, failed=True), 0.0)
    next_failure = p.ended(FAILED, 0.0)
    for d in (after_up, next_failure):
        assert isinstance(d, Retry)
        assert 0.8 * first <= d.delay <= 1.2 * first


@given(st.integers(1, 8), seeds, st.lists(ends, max_size=40))
def test_rotation_rules_and_delay_bounds_hold_for_any_history(n: int, seed: int, history: list[SessionEnd]) -> None:
    """After a tunnel: the same remote, or the next one on RESTART,[N]; after a failure: the
    next one. Every delay lies within the jitter of [first, cap]; every attempt is counted."""
    p = make_policy(n, seed, (2, 50))
    current = index(p, p.first())
    attempts = 1
    for end in history:
        d = p.ended(end, 0.0)
        assert isinstance(d, Retry)
        attempts += 1
        nxt = index(p, d)
        if end.came_up and not end.advance:
            assert nxt == current
        else:
            assert nxt == (current + 1) % n
        assert 0.8 * 2 <= d.delay <= 1.2 * 50
        current = nxt
    assert sum(p.tries) == attempts


@given(st.integers(1, 8), seeds, st.floats(0.5, 1000), st.lists(st.floats(0.0, 50.0), max_size=40))
def test_give_up_after_never_lets_an_attempt_start_late(
    n: int, seed: int, limit: float, gaps: list[float]
) -> None:
    """A client that never had a tunnel only retries when the attempt starts before the limit."""
    p = make_policy(n, seed)
    p.give_up_after = limit
    p.first()
    now = 0.0
    for gap in gaps:
        now += gap
        d = p.ended(FAILED, now)
        if isinstance(d, GiveUp):
            assert d.message.startswith(f"no tunnel within {limit:g} s")
            return
        assert now + d.delay < limit
        now += d.delay
