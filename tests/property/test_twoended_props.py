"""Hypothesis drives the link between an in-memory client stack and server stack.

Whatever the seeded impairment (loss, reordering, duplication, delay within bounds), the
session must come up and carry data both ways. Everything runs on trio's autojump clock, so
every example is bounded in mock time (`fail_after`) and costs no real time waiting.
"""

from __future__ import annotations

import functools

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trivpn.testing.pki import PKI, generate_pki
from trivpn.testing.relay import Impairment, RelayConfig
from trivpn.testing.twoended import TwoEnded, TwoEndedConfig, make_packet, open_two_ended

#: Mock seconds an example may take: tunnel up (hand-window 60 s) plus the data exchange.
EXAMPLE_BOUND = 240.0
#: Packets each side may send until one gets through.
MAX_TRIES = 60


@functools.cache
def shared_pki() -> PKI:
    return generate_pki()


rates = st.floats(min_value=0.0, max_value=0.3)
impairments = st.builds(Impairment, drop=rates, reorder=rates, duplicate=rates, delay=rates)


async def until_one_arrives(te: TwoEnded, side: str) -> int:
    """Send from `side` until the other side received one of them; returns the count sent."""
    peer = "server" if side == "client" else "client"
    for i in range(MAX_TRIES):
        await te.send(side, [make_packet(side, i)])
        await trio.sleep(0.2)
        if any(p.startswith(b"\x45" + side.encode() + b":") for p in te.received[peer]):
            return i + 1
    raise AssertionError(f"nothing from the {side} arrived in {MAX_TRIES} tries")


@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    up=impairments,
    down=impairments,
    latency=st.floats(min_value=0.0, max_value=0.1),
    delay_max=st.floats(min_value=0.0, max_value=0.5),
    wrap=st.sampled_from(["none", "tls-auth", "tls-crypt"]),
)
def test_session_comes_up_and_carries_data_over_any_bounded_impairment(
    seed: int, up: Impairment, down: Impairment, latency: float, delay_max: float, wrap: str
) -> None:
    link = RelayConfig(up=up, down=down, seed=seed, latency=latency, delay_max=delay_max)

    async def main() -> None:
        with trio.fail_after(EXAMPLE_BOUND):
            async with open_two_ended(TwoEndedConfig(link=link, wrap=wrap), pki=shared_pki(), seed=seed) as te:
                for side in ("client", "server"):
                    await until_one_arrives(te, side)
                for side in ("client", "server"):
                    mux = te.stacks[side].muxer.stats
                    # nothing was corrupted or truncated (duplicates count as replays instead)
                    assert mux.drop_malformed == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
