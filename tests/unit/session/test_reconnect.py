"""The reconnect policy (pure) and the client's thin loop over it."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest
import trio
import trio.testing
from helpers.profiles import make_profile

from trivpn.client import Client
from trivpn.errors import ConfigError, ConnectTimeout, FatalError, SessionRestart
from trivpn.networkio.transport import ResolveError, TransportError
from trivpn.profile.profile import Profile, Remote
from trivpn.session.config import ConnectionConfig, SessionConfig
from trivpn.session.reconnect import (
    Candidate,
    GiveUp,
    ReconnectPolicy,
    Retry,
    SessionEnd,
    backoff_delay,
    candidates,
)
from trivpn.workers.manager import WorkersManager, primary_error


class NoJitter(random.Random):
    """uniform() returns the middle of the range: delays are exactly the backoff base."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


def conn(*hosts: str, retry: tuple[int, int] | None = None, retry_max: int | None = None) -> ConnectionConfig:
    profile = Profile(
        remotes=[Remote(h, 1194, "udp") for h in hosts], connect_retry=retry, connect_retry_max=retry_max
    )
    return ConnectionConfig.from_profile(profile, 60.0)


def policy(*conns: ConnectionConfig, rng: random.Random | None = None, **kw: Any) -> ReconnectPolicy:
    return ReconnectPolicy(candidates(conns, random.Random(0)), rng=rng or NoJitter(), now=0.0, **kw)


FAILED = SessionEnd(came_up=False, reason="no answer", failed=True)


def host(decision: Retry | GiveUp) -> str:
    assert isinstance(decision, Retry), decision
    return decision.candidate.remote.host


def test_candidates_cover_every_remote_of_every_block_in_order() -> None:
    a, b = conn("a1", "a2"), conn("b1")
    assert [c.remote.host for c in candidates([a, b], random.Random(1))] == ["a1", "a2", "b1"]
    assert candidates([a, b], random.Random(1))[2].connection is b
    shuffled = [c.remote.host for c in candidates([a, b], random.Random(7), shuffle=True)]
    expected = ["a1", "a2", "b1"]
    random.Random(7).shuffle(expected)
    assert shuffled == expected


def test_candidate_profile_is_its_blocks() -> None:
    a = conn("a")
    assert Candidate(a, a.remotes[0]).profile is a.profile


def test_first_attempt() -> None:
    first = policy(conn("a", "b")).first()
    assert (first.candidate.remote.host, first.attempt, first.delay) == ("a", 0, 0.0)


def test_failures_rotate_and_double_the_delay_up_to_the_cap() -> None:
    p = policy(conn("a", "b", "c", retry=(2, 20)))
    p.first()
    seen = []
    for _ in range(7):
        d = p.ended(FAILED, 0.0)
        assert isinstance(d, Retry) and d.reason == "no answer"
        seen.append((d.candidate.remote.host, d.attempt, d.delay))
    assert seen == [
        ("b", 0, 2.0),
        ("c", 0, 4.0),
        ("a", 1, 8.0),
        ("b", 1, 16.0),
        ("c", 1, 20.0),
        ("a", 2, 20.0),
        ("b", 2, 20.0),
    ]


def test_a_session_that_came_up_retries_the_same_remote_and_resets_the_backoff() -> None:
    p = policy(conn("a", "b"))
    p.first()
    assert host(p.ended(FAILED, 0.0)) == "b"
    assert host(p.ended(FAILED, 0.0)) == "a"
    d = p.ended(SessionEnd(came_up=True, reason="ping-restart", failed=True), 0.0)
    assert isinstance(d, Retry) and d.candidate.remote.host == "a" and d.delay == 1.0
    assert p.failures == 0


def test_restart_with_advance_moves_on_even_after_a_tunnel() -> None:
    p = policy(conn("a", "b"))
    p.first()
    d = p.ended(SessionEnd(came_up=True, reason="server RESTART", failed=True, advance=True), 0.0)
    assert host(d) == "b" and isinstance(d, Retry) and d.delay == 1.0


def test_connect_retry_max_ends_after_that_many_attempts_at_each_remote() -> None:
    p = policy(conn("a", "b", retry_max=2))
    p.first()
    decisions = [p.ended(FAILED, 0.0) for _ in range(4)]
    assert all(isinstance(d, Retry) for d in decisions[:3])
    last = decisions[3]
    assert last == GiveUp("giving up after 2 attempt(s) at each remote (connect-retry-max): no answer")
    assert p.tries == [2, 2]


def test_resolv_retry_gives_up_after_resolution_failed_that_long() -> None:
    p = policy(conn("a"), resolv_retry=30.0)
    p.first()
    unresolved = SessionEnd(came_up=False, reason="cannot resolve a", failed=True, unresolved=True)
    assert isinstance(p.ended(unresolved, 100.0), Retry)
    assert isinstance(p.ended(unresolved, 120.0), Retry)
    assert isinstance(p.ended(FAILED, 125.0), Retry)  # it resolved: the clock starts again
    assert isinstance(p.ended(unresolved, 140.0), Retry)
    assert isinstance(p.ended(unresolved, 169.0), Retry)
    assert p.ended(unresolved, 170.0) == GiveUp("cannot resolve a (gave up after resolv-retry 30 s)")


def test_give_up_after_applies_only_until_a_tunnel_came_up() -> None:
    p = policy(conn("a", retry=(4, 4)), give_up_after=10.0)
    p.first()
    assert isinstance(p.ended(FAILED, 3.0), Retry)  # next attempt at 7 < 10
    assert p.ended(FAILED, 6.0) == GiveUp("no tunnel within 10 s: no answer", timeout=True)  # 6 + 4 >= 10
    p = policy(conn("a", retry=(4, 4)), give_up_after=10.0)
    p.first()
    assert isinstance(p.ended(SessionEnd(came_up=True, failed=True), 3.0), Retry)
    assert isinstance(p.ended(FAILED, 500.0), Retry)


def test_give_up_at_bounds_attempts_only_until_a_tunnel_came_up() -> None:
    assert policy(conn("a")).give_up_at() is None  # no --connect-timeout
    p = ReconnectPolicy(candidates([conn("a")], random.Random(0)), rng=NoJitter(), now=100.0, give_up_after=2.0)
    assert p.give_up_at() == 102.0
    p.first()
    p.ended(SessionEnd(came_up=True, failed=True), 101.0)
    assert p.give_up_at() is None  # a tunnel was up: reconnects take their whole window


def test_no_reconnect_reraises_the_session_error() -> None:
    p = policy(conn("a"), no_reconnect=True)
    p.first()
    assert p.ended(FAILED, 0.0) == GiveUp("no answer", reraise=True)
    # a session that ended quietly (no error) is retried, as it always was
    p = policy(conn("a"), no_reconnect=True)
    p.first()
    d = p.ended(SessionEnd(came_up=True), 0.0)
    assert isinstance(d, Retry) and d.reason == "the session ended"


def test_no_remote_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        policy(conn())


def test_backoff_never_overflows() -> None:
    assert backoff_delay(10_000, 1.0, 30.0, NoJitter()) == 30.0
    assert backoff_delay(0, 5.0, 30.0, NoJitter()) == 5.0


def test_policy_from_a_session_config() -> None:
    text = "remote-random\nresolv-retry 15\n"
    cfg = SessionConfig.from_profile(
        make_profile(text, remote="remote a 1194 udp\nremote b 1194 udp\nremote c 1194 udp\n"),
        no_reconnect=True,
        give_up_after=9.0,
    )
    p = ReconnectPolicy.for_config(cfg, random.Random(3), 0.0)
    expected = ["a", "b", "c"]
    random.Random(3).shuffle(expected)
    assert [c.remote.host for c in p.candidates] == expected
    assert (p.resolv_retry, p.no_reconnect, p.give_up_after) == (15.0, True, 9.0)


# ----------------------------------------------------------------- the client's loop


class ScriptedClient(Client):
    """A Client whose sessions follow a script instead of touching the network."""

    def __init__(self, config: SessionConfig, script: list[BaseException | None]) -> None:
        super().__init__(config, rng=NoJitter())
        self.script = script
        self.tried: list[tuple[str, int]] = []
        self.give_up_at: list[float | None] = []

    async def _session(self, cand: Candidate, attempt: int, task_status: Any, give_up_at: float | None = None) -> bool:
        self.tried.append((cand.remote.host, attempt))
        self.give_up_at.append(give_up_at)
        step = self.script.pop(0)
        self._came_up = step is None or isinstance(step, Up)
        if isinstance(step, Up):
            if task_status is not None:
                task_status.started("info")
            step = step.then
        if step is not None:
            raise step
        return self._came_up


class Up(Exception):
    """Script step: the tunnel comes up, then the session ends with `then`."""

    def __init__(self, then: BaseException) -> None:
        super().__init__("up")
        self.then = then


async def run_client(client: Client) -> None:
    manager = WorkersManager()

    async def setup(m: WorkersManager) -> None:
        assert m.nursery is not None
        m.start_service("client", client.run, m)

    await manager.run(setup)


def scripted(text: str, script: list[BaseException | None], **overrides: Any) -> ScriptedClient:
    remotes = "remote a 1194 udp\nremote b 1194 udp\n"
    return ScriptedClient(SessionConfig.from_profile(make_profile(text, remote=remotes), **overrides), script)


async def test_client_gives_up_with_the_connect_retry_max_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    client = scripted("connect-retry 1 1\nconnect-retry-max 1\n", [TransportError("no answer")] * 2)
    caplog.set_level(logging.WARNING, logger="trivpn")
    with pytest.raises(BaseException) as exc:
        await run_client(client)
    err = primary_error(exc.value)
    assert isinstance(err, FatalError)
    assert str(err) == "giving up after 1 attempt(s) at each remote (connect-retry-max): no answer"
    assert client.tried == [("a", 0), ("b", 0)]
    assert [r.getMessage() for r in caplog.records] == ["no answer; reconnecting in 1.0 s"]


async def test_client_reconnects_to_the_same_remote_after_a_tunnel(autojump_clock: trio.testing.MockClock) -> None:
    restart = SessionRestart("ping-restart")
    client = scripted(
        "", [TransportError("x"), Up(restart), Up(restart), FatalError("AUTH_FAILED")], no_reconnect=False
    )
    with pytest.raises(BaseException) as exc:
        await run_client(client)
    assert str(primary_error(exc.value)) == "AUTH_FAILED"  # not a SessionRestart: ends the run
    assert client.tried == [("a", 0), ("b", 0), ("b", 1), ("b", 2)]


async def test_client_bounds_each_attempt_by_the_give_up_instant(autojump_clock: trio.testing.MockClock) -> None:
    client = scripted("connect-retry 1 1\n", [TransportError("x"), Up(SessionRestart("r")), FatalError("end")],
                      give_up_after=30.0)
    with pytest.raises(BaseExceptionGroup) as exc:
        await run_client(client)
    assert str(primary_error(exc.value)) == "end"
    start = client.give_up_at[0]
    assert start is not None and client.give_up_at[1] == start  # 30 s after the start, both attempts
    assert client.give_up_at[2] is None  # after a tunnel: no limit


async def test_connect_timeout_ends_an_unanswered_udp_attempt_in_time() -> None:
    """A server that never answers: `--connect-timeout 1.5` gave up only after the attempt's
    whole connect window (60 s); now the attempt itself ends at the give-up instant."""
    silent = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    config = SessionConfig.from_profile(make_profile("", remote=f"remote 127.0.0.1 {port} udp\n"),
                                        give_up_after=1.5)
    started = trio.current_time()
    with trio.fail_after(20), silent, pytest.raises(BaseException) as exc:
        await run_client(Client(config))
    err = primary_error(exc.value)
    assert isinstance(err, ConnectTimeout) and str(err).startswith("no tunnel within 1.5 s"), err
    assert trio.current_time() - started < 10


async def test_client_no_reconnect_raises_the_session_error(autojump_clock: trio.testing.MockClock) -> None:
    client = scripted("", [ResolveError("cannot resolve a")], no_reconnect=True)
    with pytest.raises(BaseException) as exc:
        await run_client(client)
    err = primary_error(exc.value)
    assert isinstance(err, ResolveError) and str(err) == "cannot resolve a"


# ----------------------------------------------------------------- never fail open


def test_restart_cause_sorts_network_errors_from_user_errors() -> None:
    from trivpn.datachannel.service import PingExit, PingRestart
    from trivpn.errors import LocalProtocolError, RemoteProtocolError
    from trivpn.networkio.transport import StreamCorrupted
    from trivpn.session.reconnect import PeerError, restart_cause

    for restart in (SessionRestart("x"), TransportError("x"), StreamCorrupted("x"), PingRestart("x")):
        assert restart_cause(restart) is restart
    decoded = RemoteProtocolError("invalid TCP frame length 0")
    cause = restart_cause(decoded)
    assert isinstance(cause, PeerError) and cause.__cause__ is decoded and "frame length 0" in str(cause)
    # what the user must fix, and bugs, end the run
    for final in (FatalError("AUTH_FAILED"), PingExit("ping-exit"), ConfigError("bad profile"),
                  LocalProtocolError("bug"), ValueError("bug"), KeyboardInterrupt()):
        assert restart_cause(final) is None


async def test_client_reconnects_after_refused_network_input(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A decode error that escapes a layer (what an attacker on the path can cause) is a
    reconnect with backoff; the run then ends only for a reason the user must fix."""
    from trivpn.errors import RemoteProtocolError

    client = scripted("connect-retry 1 1\n", [Up(RemoteProtocolError("garbage")), FatalError("HALT")])
    caplog.set_level(logging.WARNING, logger="trivpn")
    with pytest.raises(BaseException) as exc:
        await run_client(client)
    assert str(primary_error(exc.value)) == "HALT"
    assert client.tried == [("a", 0), ("a", 1)]  # after a tunnel: the same remote again
    assert [r.getMessage() for r in caplog.records] == [
        "refused input from the network: garbage; reconnecting in 1.0 s"
    ]
