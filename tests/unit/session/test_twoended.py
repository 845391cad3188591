"""A client-role stack and a server-role stack talking to each other in memory (no root).

This is the proof that the layers are role-symmetric: the same `SessionStack` in both roles,
joined by `MemoryLink`, completes the reset exchange, TLS, key method 2 and PUSH_REPLY,
moves data both ways, renegotiates from either side without losing a packet on a clean
link, and ends cleanly from either side. All on trio's MockClock (autojump): no real time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from trivpn.datachannel.service import PingRestart
from trivpn.errors import SessionRestart
from trivpn.messages import ClientReady, TunnelUp
from trivpn.testing.pki import PKI, generate_pki
from trivpn.testing.relaycore import Impairment, RelayConfig
from trivpn.testing.twoended import TwoEnded, TwoEndedConfig, make_packet, open_two_ended

SIDES = ("client", "server")


@pytest.fixture(scope="module")
def pki() -> PKI:
    return generate_pki()


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def other(side: str) -> str:
    return "server" if side == "client" else "client"


async def paced_traffic(te: TwoEnded, count: int, gap: float, tag: str = "") -> None:
    """`count` distinct packets from each side, one every `gap` seconds."""

    async def one(side: str) -> None:
        for i in range(count):
            await te.send(side, [make_packet(side + tag, i)])
            await trio.sleep(gap)

    async with trio.open_nursery() as nursery:
        for side in SIDES:
            nursery.start_soon(one, side)
    await trio.sleep(1.0)  # let the last packets arrive


def assert_exactly_once(te: TwoEnded, count: int, tag: str = "") -> None:
    for side in SIDES:
        expected = {make_packet(other(side) + tag, i) for i in range(count)}
        got = {p: n for p, n in te.received[side].items() if p in expected}
        assert set(got) == expected, f"{side} lost {len(expected - set(got))} of {count}"
        assert set(got.values()) == {1}, f"{side} got duplicates"


@pytest.mark.parametrize("wrap", ["none", "tls-auth", "tls-crypt"])
@pytest.mark.parametrize("key_derivation", ["auto", "prf"])
def test_handshake_and_data_both_ways(pki: PKI, wrap: str, key_derivation: str) -> None:
    async def main() -> None:
        cfg = TwoEndedConfig(wrap=wrap, key_derivation=key_derivation)
        async with open_two_ended(cfg, pki=pki, seed=1) as te:
            cup, sup = te.up["client"], te.up["server"]
            assert isinstance(cup, TunnelUp) and isinstance(sup, ClientReady)
            assert cup.cipher == sup.cipher == "AES-256-GCM"
            expected = "tls-ekm" if key_derivation == "auto" else "tls1-prf"
            assert cup.key_derivation == sup.key_derivation == expected
            assert cup.settings.ifconfig_local == "10.8.0.2"
            assert "CN=trivpn-test-server" in cup.peer_subject
            assert "CN=trivpn-test-client" in sup.peer_subject
            await paced_traffic(te, 200, 0.001)
            assert_exactly_once(te, 200)
            for side in SIDES:
                mux = te.stacks[side].muxer.stats
                assert mux.drop_unauthentic == mux.drop_malformed == mux.drop_session == 0
                core = te.stacks[side].data.core
                assert core is not None and core.stats.drop_no_key == 0

    run(main)


def test_five_renegotiations_from_both_sides_lose_nothing(pki: PKI) -> None:
    async def main() -> None:
        async with open_two_ended(TwoEndedConfig(wrap="tls-crypt"), pki=pki, seed=2) as te:
            done = trio.Event()

            async def renegotiate() -> None:
                for n in range(1, 6):
                    await trio.sleep(0.5)
                    await te.renegotiate(SIDES[n % 2])  # server, client, server, ...
                    await te.wait_until(lambda: min(te.renegotiations(s) for s in SIDES) >= n, 30)  # noqa: B023
                done.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(renegotiate)
                await paced_traffic(te, 400, 0.01)
                await done.wait()
            assert [te.renegotiations(s) for s in SIDES] == [5, 5]
            assert te.primary_key_id("client") == te.primary_key_id("server") == 5
            assert_exactly_once(te, 400)
            await paced_traffic(te, 50, 0.01, tag="after")
            assert_exactly_once(te, 50, tag="after")
            # the client's packets proved it has key 5: the server seals with it too
            assert te.sending_key_id("client") == te.sending_key_id("server") == 5

    run(main)


@pytest.mark.parametrize("side", SIDES)
def test_reneg_sec_timer_renegotiates_repeatedly(pki: PKI, side: str) -> None:
    async def main() -> None:
        cfg = TwoEndedConfig(wrap="tls-auth")
        setattr(cfg, f"{side}_reneg_sec", 2.0)
        async with open_two_ended(cfg, pki=pki, seed=3) as te:
            await paced_traffic(te, 1100, 0.01)  # 11 s: five reneg-sec periods
            assert min(te.renegotiations(s) for s in SIDES) >= 5
            assert_exactly_once(te, 1100)

    run(main)


@pytest.mark.parametrize("cc_exit", [True, False])
def test_client_leaves_and_the_server_sees_it(pki: PKI, cc_exit: bool) -> None:
    async def main() -> None:
        async with open_two_ended(TwoEndedConfig(cc_exit=cc_exit), pki=pki, seed=4) as te:
            await te.exit("client")
            with trio.fail_after(10):
                ended = await te.wait_ended("server")
            assert isinstance(ended, SessionRestart)
            # EXIT on the control channel with cc-exit, else OCC EXIT data packets
            assert ("EXIT" if cc_exit else "exit notification") in str(ended)
            assert te.ended["client"] is None  # the client is still up; it only said goodbye

    run(main)


@pytest.mark.parametrize("cc_exit", [True, False])
def test_server_leaves_and_the_client_sees_it(pki: PKI, cc_exit: bool) -> None:
    async def main() -> None:
        async with open_two_ended(TwoEndedConfig(cc_exit=cc_exit), pki=pki, seed=5) as te:
            await te.exit("server")
            with trio.fail_after(10):
                ended = await te.wait_ended("client")
            # a server always says RESTART on the control channel
            assert isinstance(ended, SessionRestart) and not isinstance(ended, PingRestart)
            assert "RESTART" in str(ended)

    run(main)


def test_impaired_link_still_completes_and_carries_data(pki: PKI) -> None:
    bad = Impairment(drop=0.2, reorder=0.2, duplicate=0.2, delay=0.2)
    link = RelayConfig(up=bad, down=bad, seed=7, latency=0.01, delay_max=0.3)

    async def main() -> None:
        cfg = TwoEndedConfig(link=link, wrap="tls-crypt")
        async with open_two_ended(cfg, pki=pki, seed=7) as te:
            await te.renegotiate("client")
            await paced_traffic(te, 300, 0.05)
            for side in SIDES:
                assert sum(te.received[side].values()) > 100
            await te.wait_until(lambda: min(te.renegotiations(s) for s in SIDES) >= 1, 120)
            up, down = te.link.counters
            assert up.dropped and down.dropped and up.duplicated and up.reordered

    run(main)


def test_burst_traffic_across_renegotiations_loses_nothing(pki: PKI) -> None:
    async def main() -> None:
        async with open_two_ended(TwoEndedConfig(), pki=pki, seed=8) as te:
            sent = dict.fromkeys(SIDES, 0)

            async def burst(side: str, stop: trio.Event) -> None:
                for i in range(20_000):  # bounded; stops once the renegotiations are done
                    if stop.is_set():
                        return
                    await te.send(side, [make_packet(side, i)])
                    sent[side] += 1
                    await trio.lowlevel.checkpoint()  # no time passes: renegotiation races data

            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                for side in SIDES:
                    nursery.start_soon(burst, side, stop)
                for n in range(1, 7):
                    await te.renegotiate(SIDES[n % 2])
                    for _ in range(20_000):  # the mock clock stands still while data flows
                        if min(te.renegotiations(s) for s in SIDES) >= n:
                            break
                        await trio.lowlevel.checkpoint()
                    assert min(te.renegotiations(s) for s in SIDES) >= n
                stop.set()
            await trio.sleep(1.0)
            for side in SIDES:
                assert sum(te.received[other(side)].values()) == sent[side]

    run(main)
