"""`connect`'s management/status/metrics options: profile lines, flags, which one wins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.profiles import profile_text

from trivpn import cli
from trivpn.errors import ConfigError
from trivpn.profile.profile import load_profile


def _options(tmp_path: Path, extra: str, *flags: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "client.ovpn"
    path.write_text(profile_text(extra))
    args = cli.build_parser().parse_args(["connect", str(path), *flags])
    return cli._observe_options(load_profile(path), args)


def test_nothing_asked_imports_nothing(tmp_path: Path) -> None:
    assert _options(tmp_path, "") is None


def test_profile_lines_relative_to_the_profile(tmp_path: Path) -> None:
    extra = "management 127.0.0.1 7505 mgmt.pw\nmanagement-hold\nauth-retry nointeract\nstatus client.status 5\n"
    options, monitor = _options(tmp_path, extra)
    assert options.management.address == "127.0.0.1" and options.management.port == 7505
    assert options.management.password_file == str(tmp_path / "mgmt.pw")
    assert options.status == (str(tmp_path / "client.status"), 5.0)
    assert monitor.hold_flag and monitor.auth_retry == "nointeract" and not monitor.query_passwords


def test_flags_win(tmp_path: Path) -> None:
    options, monitor = _options(
        tmp_path, "management 127.0.0.1 7505\n",
        "--management", "/run/x.sock", "--management-query-passwords", "--status", "s.txt",
        "--metrics-addr", "127.0.0.1:9100", "--auth-retry", "interact",
    )
    assert options.management.address == "/run/x.sock" and options.management.port is None
    # flags are relative to the working directory, not the profile's
    assert options.status == (os.path.abspath("s.txt"), 60.0) and options.metrics == ("127.0.0.1", 9100)
    assert monitor.query_passwords and monitor.auth_retry == "interact"


def test_bad_status_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--status takes FILE"):
        _options(tmp_path, "", "--status", "a", "b")


@pytest.mark.parametrize("port", ["0", "99999", "65536"])
def test_management_port_out_of_range(tmp_path: Path, port: str) -> None:
    """99999 was accepted and the interface listened on 99999 % 65536 = 34463."""
    with pytest.raises(ConfigError, match=f"--management port must be 1..65535, not {port}"):
        _options(tmp_path, "", "--management", f"127.0.0.1:{port}")
