"""Hypothesis drives the link between an in-memory client stack and server stack.

Whatever the seeded impairment (loss, reordering, duplication, delay within bounds), the
session must come up and carry data both ways. Everything runs on trio's autojump clock, so
every example is bounded in mock time (`fail_after`) and costs no real time waiting.

The hand-window is widened from OpenVPN's 60 s: at 30 % loss each way, six reset attempts
in a row fail about once in a hundred draws, and a real client would then simply reconnect.
What is tested is that the protocol converges, not how lucky a 60 s window is.
"""

from __future__ import annotations

import functools

import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

from trivpn.testing.pki import PKI, generate_pki
from trivpn.testing.relaycore import Impairment, RelayConfig
from trivpn.testing.twoended import TwoEnded, TwoEndedConfig, make_packet, open_two_ended

#: Mock seconds the tunnel may take to come up (see the module docstring).
HAND_WINDOW = 600.0
#: Mock seconds an example may take: tunnel up plus the data exchange.
EXAMPLE_BOUND = HAND_WINDOW + 60.0
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
# six resets (or their answers) lost in a row: more than a 60 s hand-window allows
@example(seed=292, up=Impairment(drop=0.28125), down=Impairment(drop=0.25), latency=0.0, delay_max=0.0, wrap="none")
def test_session_comes_up_and_carries_data_over_any_bounded_impairment(
    seed: int, up: Impairment, down: Impairment, latency: float, delay_max: float, wrap: str
) -> None:
    link = RelayConfig(up=up, down=down, seed=seed, latency=latency, delay_max=delay_max)

    async def main() -> None:
        with trio.fail_after(EXAMPLE_BOUND):
            async with open_two_ended(TwoEndedConfig(link=link, wrap=wrap, hand_window=HAND_WINDOW), pki=shared_pki(), seed=seed) as te:
                for side in ("client", "server"):
                    await until_one_arrives(te, side)
                for side in ("client", "server"):
                    mux = te.stacks[side].muxer.stats
                    # nothing was corrupted or truncated (duplicates count as replays instead)
                    assert mux.drop_malformed == 0

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

