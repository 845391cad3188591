"""The data-path tuning variables (TRIVPN_RX_COALESCE, TRIVPN_DATA_THREADS, TRIVPN_TUN_GRO):
a mistyped value is a one-line error before anything connects, never a silently different
data path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trivpn.cli_common import check_tuning_env
from trivpn.datachannel import coalesce
from trivpn.datachannel.threadrun import DATA_THREADS_ENV, adaptive_from_env, split_from_env
from trivpn.errors import ConfigError
from trivpn.tun.linux import TUN_GRO_ENV, gro_wanted

VARS = (coalesce.RX_COALESCE_ENV, DATA_THREADS_ENV, TUN_GRO_ENV)


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("var,value", [
    (coalesce.RX_COALESCE_ENV, "0"), (coalesce.RX_COALESCE_ENV, "1"), (coalesce.RX_COALESCE_ENV, "udp,tcp,tun"),
    (coalesce.RX_COALESCE_ENV, " TCP , udp, "), (DATA_THREADS_ENV, "1"), (DATA_THREADS_ENV, "2"),
    (DATA_THREADS_ENV, ""), (TUN_GRO_ENV, "0"), (TUN_GRO_ENV, "1"),
])
def test_documented_values_are_accepted(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    check_tuning_env()


@pytest.mark.parametrize("var,value,words", [
    (coalesce.RX_COALESCE_ENV, "udp,tpc", "expected 0, 1, or the parts to keep from tcp, tun, udp"),
    (coalesce.RX_COALESCE_ENV, ",", "expected 0, 1"),
    (coalesce.RX_COALESCE_ENV, "off", "expected 0, 1"),
    (DATA_THREADS_ENV, "3", "expected 1 (one thread), 2 (one per direction) or unset"),
    (DATA_THREADS_ENV, "two", "expected 1"),
    (TUN_GRO_ENV, "no", "expected 0 (no write offload) or 1"),
])
def test_anything_else_is_a_config_error(monkeypatch: pytest.MonkeyPatch, var: str, value: str, words: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=rf"^{var}={value!r}: {words}".replace("(", r"\(").replace(")", r"\)")):
        check_tuning_env()


def test_the_readers_refuse_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library user's session reads them where they apply, without the CLI's check."""
    monkeypatch.setenv(DATA_THREADS_ENV, "4")
    for reader in (split_from_env, adaptive_from_env):
        with pytest.raises(ConfigError):
            reader()
    monkeypatch.setenv(coalesce.RX_COALESCE_ENV, "udp,gro")
    with pytest.raises(ConfigError):
        coalesce.default_rx_coalesce()
    assert coalesce.default_rx_coalesce(low_latency=True) is coalesce.OFF  # low latency: not read
    monkeypatch.setenv(TUN_GRO_ENV, "yes")
    with pytest.raises(ConfigError):
        gro_wanted()


@pytest.mark.parametrize("command", ["connect", "ping"])
def test_the_cli_says_so_in_one_line_before_reading_the_profile(command: str) -> None:
    argv = [sys.executable, "-m", "trivpn", command, "/nonexistent/client.ovpn"]
    if command == "ping":
        argv.append("10.8.0.1")
    env = {**os.environ, DATA_THREADS_ENV: "3"}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert out.stderr.splitlines() == [
        "trivpn: error: TRIVPN_DATA_THREADS='3': expected 1 (one thread), 2 (one per direction) or unset (adaptive)"
    ]


def test_other_commands_do_not_read_them() -> None:
    env = {**os.environ, DATA_THREADS_ENV: "3"}
    out = subprocess.run([sys.executable, "-m", "trivpn", "status", "/nonexistent/mgmt.sock"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert "management interface" in out.stderr and DATA_THREADS_ENV not in out.stderr
