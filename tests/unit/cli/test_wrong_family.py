"""A literal remote address of the family that -4/-6 (or `proto udp4/udp6`) rules out can
never resolve; `ping -6` against `remote 127.0.0.1` retried "cannot resolve" until
--connect-timeout (60 s), `connect` for ever. Now one line at once."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.profiles import make_profile, profile_text

from trivpn.client import check_remotes, unreachable_remotes
from trivpn.errors import ConfigError
from trivpn.session.config import SessionConfig

ROOT = Path(__file__).resolve().parents[3]


def _config(remotes: str, extra: str = "", family: int | None = None) -> SessionConfig:
    return SessionConfig.from_profile(make_profile(extra, remote=remotes), family=family)


@pytest.mark.parametrize(
    ("remotes", "extra", "family", "needle"),
    [
        ("remote 192.0.2.1 1194 udp\n", "", 6, "remote 192.0.2.1 is an IPv4 address, but only IPv6 may be used (-6)"),
        ("remote 2001:db8::1 1194 udp\n", "", 4, "remote 2001:db8::1 is an IPv6 address, but only IPv4 may be used (-4)"),
        ("remote 192.0.2.1 1194 udp6\n", "", None, "(proto udp6)"),
        ("remote 2001:db8::1 1194 tcp4\n", "", None, "(proto tcp4)"),
        ("remote vpn.example 1194 tcp\n", "http-proxy 192.0.2.9 3128\n", 6, "the proxy 192.0.2.9 is an IPv4 address"),
    ],
)
def test_a_remote_that_can_never_resolve_is_one_line(remotes: str, extra: str, family: int | None, needle: str) -> None:
    with pytest.raises(ConfigError, match="no remote can be reached") as info:
        check_remotes(_config(remotes, extra, family))
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("remotes", "extra", "family"),
    [
        ("remote 192.0.2.1 1194 udp\n", "", 4),
        ("remote 2001:db8::1 1194 udp\n", "", 6),
        ("remote 192.0.2.1 1194 udp\n", "", None),
        ("remote vpn.example 1194 udp\n", "", 6),  # a name may have either family
        ("remote 192.0.2.1 1194 tcp\n", "http-proxy proxy.example 3128\n", 6),  # the proxy resolves it
    ],
)
def test_reachable_remotes_pass(remotes: str, extra: str, family: int | None) -> None:
    assert unreachable_remotes(_config(remotes, extra, family)) == []


def test_one_unreachable_remote_among_others_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    config = _config("remote 192.0.2.1 1194 udp\nremote vpn.example 1194 udp\n", family=6)
    with caplog.at_level(logging.WARNING, logger="trivpn"):
        check_remotes(config)
    assert [r.getMessage() for r in caplog.records] == [
        "remote 192.0.2.1 is an IPv4 address, but only IPv6 may be used (-6): that remote can never be reached"
    ]


def _run(*argv: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "trivpn", *argv],
        capture_output=True, text=True, timeout=15, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )


def test_ping_6_to_an_ipv4_literal_fails_at_once_with_exit_2(tmp_path: Path) -> None:
    profile = tmp_path / "c.ovpn"
    profile.write_text(profile_text(remote="remote 127.0.0.1 1194 udp\n"))
    r = _run("ping", str(profile), "10.8.0.1", "-6", "--connect-timeout", "5")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "trivpn: error: remote 127.0.0.1 is an IPv4 address, but only IPv6 may be used (-6): no remote can be reached"
    ]


def test_connect_4_to_an_ipv6_literal_fails_at_once_with_exit_1(tmp_path: Path) -> None:
    """In a network namespace of its own (the TUN it creates first is closed again)."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None or not os.path.exists("/dev/net/tun"):
        pytest.skip("NOT RUN: needs root, unshare and /dev/net/tun")
    profile = tmp_path / "c.ovpn"
    profile.write_text(profile_text(remote="remote ::1 1194 udp\n"))
    r = _run("connect", str(profile), "-4", prefix=(unshare, "--net"))  # would retry for ever
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [
        "trivpn: error: remote ::1 is an IPv6 address, but only IPv4 may be used (-4): no remote can be reached"
    ]
