"""`trivpn connect` and the profile's `dev`: a specific name is the interface created (it
was ignored: always `tvpn%d`); plain `dev tun` keeps trivpn's own pattern."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.profiles import profile_text

from trivpn.errors import ConfigError
from trivpn.profile.profile import parse_profile
from trivpn.tunname import DEFAULT_TUN_NAME, tun_name_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("dev", "name"),
    [(None, DEFAULT_TUN_NAME), ("tun", DEFAULT_TUN_NAME), ("tun5", "tun5"), ("vpn0", "vpn0"), ("tun%d", "tun%d"),
     ("a" * 15, "a" * 15)],
)
def test_the_name_chosen_from_dev(dev: str | None, name: str) -> None:
    assert tun_name_for(dev) == name


@pytest.mark.parametrize(
    ("dev", "why"),
    [("a" * 16, "at most 15"), ("a/b", "'/'"), ("a:b", "':'"), ("..", "'.'"), ("tün0", "ASCII"),
     ("tun%s", "%d"), ("t%d%d", "%d"), ("a b", "' '")],
)
def test_names_the_kernel_would_refuse_are_one_line(dev: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"dev '.*' is not a usable interface name: .*{why}"):
        tun_name_for(dev)


def test_the_profile_keeps_its_dev_name() -> None:
    """`Profile.dev_name` is what `connect` names the TUN after (the last `dev` line counts)."""
    assert parse_profile(profile_text()).dev_name == "tun"
    assert parse_profile(profile_text("dev tun7\n")).dev_name == "tun7"
    assert parse_profile(profile_text("dev vpn0\ndev-type tun\n")).dev_name == "vpn0"


def _in_netns(*argv: str) -> subprocess.CompletedProcess[str]:
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None or not os.path.exists("/dev/net/tun"):
        pytest.skip("NOT RUN: needs root, unshare and /dev/net/tun")
    return subprocess.run(
        [unshare, "--net", sys.executable, *argv], capture_output=True, text=True, timeout=15, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
    )


_KERNEL_TUN = """
from trivpn.engine import kernel_tun
from trivpn.errors import ConfigError
a = kernel_tun("tun5"); b = kernel_tun(); print(a.name, b.name)
try:
    kernel_tun("lo")
except ConfigError as exc:
    print(exc)
"""


def test_kernel_tun_creates_the_named_device_and_refuses_another_kinds_name() -> None:
    """In a namespace of its own: `lo` exists there and is no TUN (the kernel said only
    "Invalid argument")."""
    r = _in_netns("-c", _KERNEL_TUN)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "tun5 tvpn0",
        "interface 'lo' already exists and is not a TUN device trivpn can use (another program's, "
        "or another kind): choose another 'dev' name, or 'dev tun'",
    ]


def test_connect_takes_the_name_from_the_profile(tmp_path: Path) -> None:
    """`dev lo` + `dev-type tun` reaches the kernel as `lo`: the one line names it."""
    profile = tmp_path / "c.ovpn"
    profile.write_text(profile_text("dev lo\ndev-type tun\n", remote="remote 127.0.0.1 1194 udp\n"))
    r = _in_netns("-m", "trivpn", "connect", str(profile))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("trivpn: error: interface 'lo' already exists"), r.stderr
