"""Bad input to `trivpn relay` / `trivpn expose` ends in one line and a non-zero exit,
never a traceback, a hang, unbounded memory or a session that dies later."""

from __future__ import annotations

import os
import pathlib
import resource
import subprocess
import sys

import pytest

import trivpn
from trivpn.cli import build_parser
from trivpn.errors import ConfigError
from trivpn.reverse.build import build_expose, build_relay

TOKEN = "0123456789abcdef-cli-input"
EXPOSE = ["expose", "--server", "127.0.0.1:9000", "--local", "127.0.0.1:3000"]
TREE = os.path.dirname(os.path.dirname(os.path.abspath(trivpn.__file__)))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """`trivpn ARGS` in a child (bounded: 30 s, 1 GiB: a run that would serve, read
    forever or fill memory fails instead of stalling the tests); (exit status, stderr)."""
    full = {**os.environ, "PYTHONPATH": TREE, "TRIVPN_TOKEN": TOKEN, **(env or {})}
    out = subprocess.run(
        [sys.executable, "-m", "trivpn", *args],
        env=full,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limit_memory,
    )
    return out.returncode, out.stderr


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIVPN_TOKEN", TOKEN)


# ---------------------------------------------------------------- numeric flags


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lease", "inf"], "--lease: must be between 0 and 604800, not inf"),
        (["--lease", "nan"], "--lease: must be between 0 and 604800, not nan"),
        (["--lease", "5e9"], "--lease: must be between 0 and 604800, not 5e+09"),
        (["--idle-lease", "nan"], "--idle-lease: must be between 0 and 604800, not nan"),
        (["--idle-lease", "inf"], "--idle-lease: must be between 0 and 604800, not inf"),
        (["--port-quota", "99999999"], "--port-quota: must be between 1 and 65535"),
        (["--start-port", "70000"], "--start-port: must be between 1 and 65535"),
        (["--end-port", "70000"], "--end-port: must be between 1 and 65535"),
        (["--relay-buffer", "99999G"], "--relay-buffer: must be between 65536 and"),
        (
            ["--session-buffer", "32G", "--relay-buffer", "64G"],
            "--session-buffer: must be between 65536 and",
        ),
    ],
)
def test_relay_numeric_flags_have_the_config_file_bounds(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_relay(build_parser().parse_args(["relay", *argv]))
    assert str(ei.value).startswith(message) and "\n" not in str(ei.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-attempts", "2000000"], "--max-attempts: must be between 0 and 1000000"),
        (["--session-buffer", "1024G"], "--session-buffer: must be between 65536 and"),
    ],
)
def test_expose_numeric_flags_have_the_config_file_bounds(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_expose(build_parser().parse_args([*EXPOSE, *argv]))
    assert str(ei.value).startswith(message)


def test_in_range_flags_still_work() -> None:
    relay = build_relay(
        build_parser().parse_args(
            ["relay", "--lease", "604800", "--idle-lease", "0", "--port-quota", "65535"]
        )
    )
    assert relay.config.lease == 604800 and relay.config.idle_lease == 0
    expose = build_expose(build_parser().parse_args([*EXPOSE, "--max-attempts", "0"]))
    assert expose.config.attempts == 0


def test_lease_inf_on_the_command_line_is_one_line() -> None:
    rc, err = cli(["relay", "--addr", "127.0.0.1:0", "--lease", "inf"])
    assert rc == 1
    assert err == "trivpn: error: --lease: must be between 0 and 604800, not inf\n"


def test_file_value_is_still_checked_as_the_file_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("lease = 10\n")
    relay = build_relay(build_parser().parse_args(["relay", "--config", str(path)]))
    assert relay.config.lease == 10.0
