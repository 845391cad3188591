"""The issue-15 bounds are configurable: flags, the config file, and flags over the file."""

from __future__ import annotations

import pathlib

import pytest

from trivpn.cli import build_parser
from trivpn.errors import ConfigError
from trivpn.reverse.build import build_expose, build_relay

TOKEN = "0123456789abcdef-options"


def test_defaults_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIVPN_TOKEN", TOKEN)
    relay = build_relay(build_parser().parse_args(["relay"]))
    assert relay.config.session.session_buffer == 16 * 1024 * 1024
    assert relay.config.session.stall_timeout == 60.0
    assert relay.pool.limit == relay.config.relay_buffer == 256 * 1024 * 1024
    assert not relay.config.log_query
    args = ["relay", "--session-buffer", "1M", "--stall-timeout", "5", "--relay-buffer", "64M"]
    relay = build_relay(build_parser().parse_args([*args, "--log-query"]))
    assert relay.config.session.session_buffer == 1 << 20
    assert relay.config.session.stall_timeout == 5.0
    assert relay.pool.limit == 64 << 20 and relay.config.log_query
    expose = build_expose(
        build_parser().parse_args(
            ["expose", "--server", "relay:9000", "--local", ":8080", "--stall-timeout", "7"]
        )
    )
    assert expose.config.session.stall_timeout == 7.0 and not expose.config.log_query
    with pytest.raises(ConfigError, match="--relay-buffer must be at least --session-buffer"):
        build_relay(build_parser().parse_args(["relay", "--relay-buffer", "1M"]))
    with pytest.raises(ConfigError, match="--session-buffer must be at least 64K"):
        build_relay(build_parser().parse_args(["relay", "--session-buffer", "1K"]))


def test_config_file_and_flags_over_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(
        f'token = "{TOKEN}"\nrelay_buffer = 33554432\nlog_query = true\n'
        "[limits]\nsession_buffer = 1048576\nstall_timeout = 9\n"
    )
    relay = build_relay(build_parser().parse_args(["relay", "--config", str(path)]))
    assert relay.config.session.session_buffer == 1 << 20
    assert relay.config.session.stall_timeout == 9.0
    assert relay.config.relay_buffer == 32 << 20 and relay.config.log_query
    args = ["relay", "--config", str(path), "--stall-timeout", "3"]
    assert build_relay(build_parser().parse_args(args)).config.session.stall_timeout == 3.0
