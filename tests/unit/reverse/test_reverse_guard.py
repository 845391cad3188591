"""The relay's pre-auth bounds (issue 15): caps on unauthenticated connections, failed
logins rate-limited per source in a bounded table, the open-file limit raised at start."""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import resource
import socket

import pytest
import trio

from trivpn.cli import build_parser
from trivpn.errors import ConfigError
from trivpn.reverse.cli import TOKEN_ENV, cmd_relay, resolve_token
from trivpn.reverse.guard import GuardConfig, SourceGuard
from trivpn.reverse.relay import Relay, RelayConfig
from trivpn.reverse.sockets import raise_nofile_limit

TOKEN = b"0123456789abcdef-token"


def test_pre_auth_caps_in_total_and_per_source() -> None:
    g = SourceGuard(GuardConfig(max_pre_auth=10, max_pre_auth_per_source=4))
    admitted = [g.admit("198.51.100.1", 0.0) for _ in range(6)]
    assert admitted.count(None) == 4  # figure: 4 of 6 from one address
    assert "from this source" in str(admitted[-1])
    others = [g.admit(f"198.51.100.{i}", 0.0) for i in range(2, 12)]
    # figure: 10 in total; once full, the newcomers evict .1's oldest while it holds at
    # least two more than they would (3 evicted), and the last one is refused
    assert others.count(None) == 9 and g.pre_auth == 10 and g.table.evicted == 3
    assert g.table.held_by("198.51.100.1") == 1
    assert "unauthenticated connections already" in str(others[-1])
    g.authenticated("198.51.100.1")
    g.left("198.51.100.2")
    assert g.pre_auth == 8
    assert g.admit("198.51.100.1", 0.0) is None
    for _ in range(10):  # more leaves than admits never go below zero
        g.left("198.51.100.1")
    assert g.pre_auth == 8  # the other sources still count


def test_failed_logins_block_a_source_for_a_window() -> None:
    g = SourceGuard(GuardConfig(max_failures=3, failure_window=60.0))
    counts = []
    for _ in range(3):
        assert g.admit("203.0.113.5", 1.0) is None
        g.left("203.0.113.5")
        counts.append(g.login_failed("203.0.113.5", 1.0))
    assert counts == [1, 2, 3]
    assert "failed logins" in str(g.admit("203.0.113.5", 30.0))
    assert g.admit("203.0.113.6", 30.0) is None  # other sources unaffected
    assert g.admit("203.0.113.5", 61.0) is None  # the window ended


def test_failure_table_is_bounded() -> None:
    g = SourceGuard(GuardConfig(max_sources=1000, max_failures=1))
    for i in range(20_000):
        g.login_failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.0)
    assert g.failure_sources == 1000  # figure: 20,000 sources, 1,000 entries
    assert g.admit("10.0.78.31", 1.0) is not None  # the most recent are remembered
    assert g.admit("10.0.0.0", 1.0) is None  # the oldest were evicted


def test_open_file_limit_is_raised_towards_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("hard open-file limit too low to test")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        old, new = raise_nofile_limit(1 << 16)
        got = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        want = 1 << 16 if hard == resource.RLIM_INFINITY else min(hard, 1 << 16)
        assert (old, new, got) == (256, want, want)
        assert raise_nofile_limit(1 << 16) == (want, want)  # already there: no change
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_relay_caps_pre_auth_connections_per_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """40 idle connections from 127.0.0.1 with a cap of 8: the relay holds 8, closes the
    rest at once, and logs none of them above debug."""
    relay = Relay(
        RelayConfig(
            host="127.0.0.1",
            port=0,
            start_port=40000,
            end_port=40001,
            tokens={"alice": TOKEN},
            guard=GuardConfig(max_pre_auth=100, max_pre_auth_per_source=8),
        )
    )
    caplog.set_level(logging.DEBUG, logger="trivpn.reverse")
    socks: list[socket.socket] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(relay.serve)
            before = _fds()
            for _ in range(40):
                s = socket.create_connection(("127.0.0.1", port))
                s.setblocking(False)
                socks.append(s)
            for _ in range(2000):  # wait for the condition, bounded (and by fail_after)
                if relay.guard.pre_auth >= 8 and len(_closed(socks)) >= 32:
                    break
                await trio.sleep(0.01)
            assert relay.guard.pre_auth == 8  # figure: 8 held, 32 closed by the relay
            assert len(_closed(socks)) == 32
            # the relay's own descriptors: at most one per held connection
            assert _fds() - before - len(socks) <= 8
            nursery.cancel_scope.cancel()
    for s in socks:
        s.close()
    above_debug = [
        r for r in caplog.records if r.levelno > logging.DEBUG and "listening" not in r.getMessage()
    ]
    assert above_debug == []


def _closed(socks: list[socket.socket]) -> list[socket.socket]:
    out = []
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                out.append(s)
        except BlockingIOError:
            pass
        except OSError:
            out.append(s)
    return out


# ------------------------------------------------------------------------ tokens (CLI)


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


EXPOSE = ["expose", "--server", "r:9000", "--local", ":3000"]


def test_short_token_is_refused_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"--token: the token is 5 bytes, at least 16") as ei:
        resolve_token(_parse(["relay", "--token", "short"]))
    assert "secrets.token_urlsafe" in str(ei.value) and "\n" not in str(ei.value)
    assert resolve_token(_parse(["relay", "--token", "x" * 16])) == b"x" * 16


def test_token_from_file_or_environment(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    f = tmp_path / "token"
    f.write_text("from-a-file-0123456789\n")
    assert resolve_token(_parse([*EXPOSE, "--token-file", str(f)])) == b"from-a-file-0123456789"
    assert resolve_token(_parse(["relay", "--token-file", str(f)])) == b"from-a-file-0123456789"
    with pytest.raises(ConfigError, match="cannot read --token-file"):
        resolve_token(_parse(["relay", "--token-file", str(tmp_path / "missing")]))
    with pytest.raises(ConfigError, match="no token: give --token"):  # no token anywhere
        resolve_token(_parse(EXPOSE))
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment")
    assert resolve_token(_parse(EXPOSE)) == b"from-the-environment"
    assert resolve_token(_parse(["relay"])) == b"from-the-environment"
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(ConfigError, match=r"\$TRIVPN_TOKEN: the token is 5 bytes"):
        resolve_token(_parse(["relay"]))


def test_short_token_in_tokens_file_is_refused(tmp_path: pathlib.Path) -> None:
    f = tmp_path / "tokens"
    f.write_text("alice:long-enough-token-0123\nbob:short\n")
    with pytest.raises(ConfigError, match="client bob: the token is 5 bytes"):
        trio.run(cmd_relay, _parse(["relay", "--tokens-file", str(f)]))
