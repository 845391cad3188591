"""Property tests for the bandwidth token bucket (trivpn.reverse.bucket)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivpn.reverse.bucket import TokenBucket, parse_rate

rates = st.floats(1024.0, 1e9)
charges = st.lists(
    st.tuples(st.integers(0, 1 << 20), st.floats(0.0, 0.5)),  # bytes sent, extra idle time
    min_size=1,
    max_size=60,
)


@given(rates, st.floats(1.0, 4.0), st.floats(0.0, 1e6), charges)
def test_a_sender_that_honours_the_pauses_never_beats_the_rate(
    rate: float, burst_s: float, t0: float, steps: list[tuple[int, float]]
) -> None:
    burst = rate * burst_s
    b = TokenBucket(rate, burst, t0)
    now, sent = t0, 0
    for n, idle in steps:
        # everything sent before this send is within the bucket's allowance
        assert sent <= burst + rate * (now - t0) + 1.0 + 1e-9 * sent
        sent += n
        now += b.charge(n, now) + idle
    # and the pause never exceeds what the debt needs: right after it, a send is free
    assert b.wait(now) == 0.0


@given(rates, charges)
def test_the_pause_pays_back_exactly_the_debt(rate: float, steps: list[tuple[int, float]]) -> None:
    b = TokenBucket(rate, rate, 0.0)
    now = 0.0
    for n, idle in steps:
        before = b.tokens + min(b.burst - b.tokens, 0.0)
        pause = b.charge(n, now)
        assert pause >= 0.0
        if pause:
            assert b.tokens <= -1.0
            assert pause == pytest.approx(-b.tokens / rate)
        assert b.tokens <= b.burst and before <= b.burst
        now += pause + idle


@given(rates, st.integers(1, 64), st.integers(1, 1 << 20))
def test_long_transfer_takes_the_time_the_bucket_says(rate: float, chunks: int, size: int) -> None:
    """B bytes in equal charges: elapsed within [(B - burst - size)/rate, (B - burst)/rate]."""
    burst = max(65536.0, rate / 8)
    b = TokenBucket(rate, burst, 0.0)
    now = 0.0
    for _ in range(chunks):
        now += b.charge(size, now)
    total = chunks * size
    low = (total - burst - size - 1) / rate
    high = max(0.0, (total - burst) / rate)
    assert low - 1e-9 <= now <= high + 1e-9


@given(st.sampled_from(["2 MiB/s", "2MiB", "2097152", "16 Mbit/s", "0.5 GB/s", "1024 B/s"]))
def test_rates_parse(text: str) -> None:
    assert parse_rate(text) >= 1024


@given(st.text(max_size=20))
def test_bad_rates_raise_value_error_only(text: str) -> None:
    try:
        parse_rate(text)
    except ValueError:
        pass
