"""The impairment relay: its pure cores (no sockets, time passed in) and its trio services
over loopback."""

from __future__ import annotations

import subprocess
import sys
from functools import partial

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from trivpn.errors import ConfigError
from trivpn.testing.relay import (
    DOWN,
    UP,
    Impairment,
    RelayConfig,
    RelayCore,
    TCPImpairment,
    TCPRelay,
    TCPRelayCore,
    UDPRelay,
    main,
    parse_hostport,
)

#: Upper bound for any loopback exchange below (a bound, not an assertion about speed).
BOUND = 10


def _drain(core: RelayCore, now: float = 1e9) -> list[tuple[int, bytes]]:
    return core.datagrams_to_send(now)


def _core(seed: int = 0, **up: float) -> RelayCore:
    return RelayCore(RelayConfig(up=Impairment(**up), seed=seed))


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), "0.3"])
def test_probability_out_of_range_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError) as exc:
        RelayCore(RelayConfig(down=Impairment(drop=value)))  # type: ignore[arg-type]
    assert "down drop" in str(exc.value) and "\n" not in str(exc.value)


def test_impairment_spec_parsing() -> None:
    base = Impairment(drop=0.2)
    imp = Impairment.parse("reorder=0.1, garbage=0.5", base)
    assert (imp.drop, imp.reorder, imp.garbage) == (0.2, 0.1, 0.5)
    assert base.reorder == 0.0  # the base is not modified
    for bad in ("dorp=0.1", "drop", "drop=x", "drop=2"):
        with pytest.raises(ConfigError):
            Impairment.parse(bad)


def test_hostport_parsing() -> None:
    assert parse_hostport("127.0.0.1:1194") == ("127.0.0.1", 1194)
    assert parse_hostport("[fd00::1]:53") == ("fd00::1", 53)
    for bad in ("1194", "host:", "host:99999", ":1"):
        with pytest.raises(ConfigError):
            parse_hostport(bad)


# --- the UDP core ------------------------------------------------------------------------


def test_clean_relay_forwards_everything_unchanged_and_in_order() -> None:
    core = RelayCore(RelayConfig())
    packets = [bytes([i]) * (i + 1) for i in range(20)]
    for i, p in enumerate(packets):
        core.receive_datagram(UP if i % 2 else DOWN, p, 5.0)
    assert core.get_timer() == 5.0
    out = core.datagrams_to_send(5.0)
    assert [d for _dir, d in out] == packets
    assert [d for d, _p in out] == [UP if i % 2 else DOWN for i in range(20)]
    assert core.get_timer() is None
    assert core.counters[UP].received == core.counters[UP].sent == 10


def test_drop_everything() -> None:
    core = _core(drop=1.0)
    for i in range(10):
        core.receive_datagram(UP, b"x%d" % i, 0.0)
    assert _drain(core) == []
    assert core.counters[UP].dropped == 10 and core.counters[UP].sent == 0


def test_duplicate_everything() -> None:
    core = _core(duplicate=1.0)
    core.receive_datagram(UP, b"a", 0.0)
    core.receive_datagram(UP, b"b", 0.0)
    assert [d for _dir, d in _drain(core)] == [b"a", b"a", b"b", b"b"]


def test_reordered_datagram_is_overtaken_and_released_at_its_time() -> None:
    core = _core(reorder=1.0)
    core.config.reorder_hold = 0.5
    core.receive_datagram(UP, b"first", 10.0)
    core.config.up.reorder = 0.0
    core.receive_datagram(UP, b"second", 10.1)
    assert core.datagrams_to_send(10.2) == [(UP, b"second")]
    assert core.get_timer() == pytest.approx(10.5)
    assert core.datagrams_to_send(10.49) == []
    assert core.datagrams_to_send(10.5) == [(UP, b"first")]
    assert core.counters[UP].reordered == 1


def test_delay_stays_within_bounds() -> None:
    core = _core(delay=1.0)
    core.config.delay_max = 0.3
    for i in range(50):
        core.receive_datagram(UP, bytes([i]), 1.0)
    assert core.datagrams_to_send(0.999) == []
    assert len(core.datagrams_to_send(1.3)) == 50
    assert core.counters[UP].delayed == 50


@given(st.binary(min_size=1, max_size=200), st.integers(0, 2**32))
def test_corruption_flips_one_to_three_bits(data: bytes, seed: int) -> None:
    core = _core(seed, corrupt=1.0)
    core.receive_datagram(UP, data, 0.0)
    [(_d, out)] = _drain(core)
    assert len(out) == len(data)
    flipped = sum(bin(a ^ b).count("1") for a, b in zip(data, out, strict=True))
    # two flips of the same bit cancel, so 0 is possible only when a bit is hit twice
    assert flipped <= 3 and (flipped % 2 == 1 or flipped in (0, 2))


@given(st.binary(min_size=1, max_size=200), st.integers(0, 2**32))
def test_truncation_keeps_a_strict_prefix(data: bytes, seed: int) -> None:
    core = _core(seed, truncate=1.0)
    core.receive_datagram(UP, data, 0.0)
    [(_d, out)] = _drain(core)
    assert len(out) < len(data) and data.startswith(out)


def test_attack_mode_sends_damaged_copies_besides_the_original() -> None:
    core = _core(corrupt=1.0)
    core.config.mutate_copies = True
    core.receive_datagram(UP, b"genuine packet", 0.0)
    out = [d for _dir, d in _drain(core)]
    assert len(out) == 2 and b"genuine packet" in out
    assert core.counters[UP].corrupted == 1


def test_replay_resends_an_older_datagram_of_the_same_direction() -> None:
    core = _core(replay=1.0)
    core.receive_datagram(UP, b"one", 0.0)  # nothing to replay yet
    core.receive_datagram(DOWN, b"down only", 0.0)
    core.receive_datagram(UP, b"two", 1.0)
    out = [d for direction, d in _drain(core) if direction == UP]
    assert out == [b"one", b"one", b"two"]
    assert core.counters[UP].replayed == 1


def test_replay_history_is_bounded() -> None:
    core = _core(replay=1.0)
    core.config.history = 4
    core = RelayCore(core.config)
    for i in range(100):
        core.receive_datagram(UP, b"%d" % i, 0.0)
    out = [d for _dir, d in _drain(core)]
    # b"0", then for each later datagram i: a replay (scheduled first), then i itself
    assert out[0::2] == [b"%d" % i for i in range(100)]
    replays = [int(d) for d in out[1::2]]
    assert all(i - 4 <= r < i for i, r in enumerate(replays, start=1))


def test_garbage_is_injected_besides_every_datagram() -> None:
    core = _core(garbage=1.0)
    core.config.garbage_max = 50
    for _ in range(20):
        core.receive_datagram(UP, b"real", 0.0)
    out = [d for _dir, d in _drain(core)]
    junk = [d for d in out if d != b"real"]
    assert out.count(b"real") == 20 and core.counters[UP].injected == 20
    assert all(1 <= len(j) <= 50 for j in junk) and len(junk) <= 20


def test_pending_datagrams_are_bounded() -> None:
    cfg = RelayConfig(latency=5.0, max_pending=3)
    core = RelayCore(cfg)
    for i in range(10):
        core.receive_datagram(UP, bytes([i]), 0.0)
    assert core.pending == 3 and core.counters[UP].overflow == 7
    assert len(_drain(core)) == 3


def _fates(seed: int, interleave_down: bool) -> list[tuple[int, bytes]]:
    imp = Impairment(drop=0.3, duplicate=0.2, corrupt=0.2, truncate=0.1, replay=0.1, garbage=0.1)
    core = RelayCore(RelayConfig(up=imp, down=imp, seed=seed))
    for i in range(200):
        core.receive_datagram(UP, b"packet %d" % i * (1 + i % 7), float(i))
        if interleave_down:
            core.receive_datagram(DOWN, b"noise" * (i % 5), float(i))
    return [(d, p) for d, p in _drain(core) if d == UP]


def test_same_seed_same_fate_whatever_the_other_direction_does() -> None:
    assert _fates(7, False) == _fates(7, False) == _fates(7, True)
    assert _fates(7, False) != _fates(8, False)


@given(
    st.integers(0, 2**32),
    st.lists(st.floats(0, 1), min_size=8, max_size=8),
    st.lists(st.tuples(st.sampled_from([UP, DOWN]), st.binary(max_size=64)), max_size=60),
)
def test_every_datagram_is_accounted_for(seed: int, probs: list[float], traffic: list[tuple[int, bytes]]) -> None:
    names = ["drop", "reorder", "duplicate", "delay", "corrupt", "truncate", "replay", "garbage"]
    imp = Impairment(**dict(zip(names, probs, strict=True)))
    core = RelayCore(RelayConfig(up=imp, down=imp, seed=seed))
    now = 0.0
    released: list[tuple[int, bytes]] = []
    for direction, data in traffic:
        now += 0.01
        core.receive_datagram(direction, data, now)
        released += core.datagrams_to_send(now)
        timer = core.get_timer()
        assert timer is None or timer > now  # nothing due is left behind
    released += _drain(core)
    assert core.pending == 0
    for d in (UP, DOWN):
        c = core.counters[d]
        assert c.received == sum(1 for direction, _ in traffic if direction == d)
        assert c.sent == c.received - c.dropped + c.duplicated + c.replayed + c.injected
        assert c.sent == sum(1 for direction, _ in released if direction == d)


# --- the TCP core ------------------------------------------------------------------------


def test_tcp_split_preserves_the_stream() -> None:
    core = TCPRelayCore(TCPImpairment(split=1.0), seed=3)
    data = bytes(range(256)) * 4
    core.receive_bytes(UP, data, 0.0)
    pieces = core.chunks_to_send(UP, 0.0)
    assert b"".join(pieces) == data and len(pieces) > 1 and max(map(len, pieces)) <= 64
    assert core.counters.splits == 1


def test_tcp_stall_holds_data_until_its_time() -> None:
    core = TCPRelayCore(TCPImpairment(stall=1.0, stall_time=2.0), seed=0)
    core.receive_bytes(DOWN, b"abc", 10.0)
    assert core.chunks_to_send(DOWN, 11.0) == []
    assert core.get_timer(DOWN) == 12.0
    assert core.chunks_to_send(DOWN, 12.0) == [b"abc"]
    assert core.get_timer(DOWN) is None


def test_tcp_cut_and_backpressure() -> None:
    core = TCPRelayCore(TCPImpairment(max_buffer=10), seed=0)
    core.receive_bytes(UP, b"x" * 10, 0.0)
    assert not core.can_receive(UP) and core.can_receive(DOWN)
    core.chunks_to_send(UP, 0.0)
    assert core.can_receive(UP)
    cutter = TCPRelayCore(TCPImpairment(cut=1.0), seed=0)
    cutter.receive_bytes(UP, b"data", 0.0)
    assert cutter.cut and not cutter.can_receive(DOWN)
    assert cutter.chunks_to_send(UP, 1.0) == []


# --- the trio services over loopback -----------------------------------------------------


async def _udp_echo(task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname())
        while True:
            data, addr = await sock.recvfrom(65536)
            await sock.sendto(data, addr)


async def test_udp_relay_over_loopback() -> None:
    cfg = RelayConfig(up=Impairment(duplicate=1.0), seed=1)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(_udp_echo)
            relay = UDPRelay(("127.0.0.1", 0), echo, cfg)
            addr = await nursery.start(relay.run)
            client = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            with client:
                for i in range(10):
                    await client.sendto(b"ping %d" % i, addr)
                got = [await client.recv(100) for _ in range(20)]
            nursery.cancel_scope.cancel()
    assert sorted(got) == sorted([b"ping %d" % i for i in range(10)] * 2)
    assert relay.counters[UP].duplicated == 10 and relay.counters[DOWN].sent == 20


async def test_udp_relay_lifetime_ends_it() -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            echo = await nursery.start(_udp_echo)
            relay = UDPRelay(("127.0.0.1", 0), echo, RelayConfig(), lifetime=0.05)
            await relay.run()
            nursery.cancel_scope.cancel()
    assert relay.address is not None


async def _tcp_echo(stream: trio.SocketStream) -> None:
    async with stream:
        async for chunk in stream:
            await stream.send_all(chunk)


async def test_tcp_relay_splits_but_preserves_the_stream() -> None:
    data = bytes(range(256)) * 40
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, _tcp_echo, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            relay = TCPRelay(("127.0.0.1", 0), ("127.0.0.1", port), TCPImpairment(split=1.0), seed=2)
            addr = await nursery.start(relay.run)
            stream = await trio.open_tcp_stream(*addr)
            async with stream:
                await stream.send_all(data)
                got = b""
                while len(got) < len(data):
                    got += await stream.receive_some(65536)
            nursery.cancel_scope.cancel()
    assert got == data
    assert relay.totals().splits >= 1 and relay.totals().bytes_up == len(data)


async def test_tcp_relay_cut_closes_the_connection() -> None:
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, _tcp_echo, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            relay = TCPRelay(("127.0.0.1", 0), ("127.0.0.1", port), TCPImpairment(cut=1.0))
            addr = await nursery.start(relay.run)
            stream = await trio.open_tcp_stream(*addr)
            async with stream:
                await stream.send_all(b"hello")
                try:
                    end = await stream.receive_some(100)
                except trio.BrokenResourceError:
                    end = b""
            nursery.cancel_scope.cancel()
    assert end == b""
    assert relay.totals().cuts == 1


# --- the command line --------------------------------------------------------------------


def test_cli_bad_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--up", "drop=7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("relay: error:") and "\n" not in err


def test_cli_runs_for_its_lifetime_and_prints_counters() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "trivpn.testing.relay", "--listen", "127.0.0.1:0",
         "--upstream", "127.0.0.1:9", "--drop", "0.5", "--lifetime", "0.2"],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("relay listening on 127.0.0.1:")
    assert lines[-1].startswith("relay counters: up: received 0")
