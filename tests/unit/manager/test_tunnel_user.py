"""Who the tunnel process runs as: `nobody` unless told otherwise, and staying the same
user only when asked for by name. Before, `open_tunnel(tunnel_user=None)` was documented
as "stay as we are" but passed no `--user`, so the tunnel took its own default, `nobody`;
`trivpn manage --tunnel-user ''` did the same without a word."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn.errors import ConfigError, FatalError
from trivpn.manager.process import tunnel_identity
from trivpn.manager.session import open_tunnel, tunnel_command

ROOT = Path(__file__).resolve().parents[3]


def _identity_args(argv: list[str]) -> list[str]:
    return [a for i, a in enumerate(argv) if a == "--keep-user" or (i and argv[i - 1] == "--user") or a == "--user"]


@pytest.mark.parametrize(
    ("user", "keep", "expected"),
    [
        (None, False, ["--user", "nobody"]),  # the safe default, spelled out
        ("alice", False, ["--user", "alice"]),
        (None, True, ["--keep-user"]),  # staying is explicit
    ],
)
def test_the_tunnel_command_always_names_its_identity(user: str | None, keep: bool, expected: list[str]) -> None:
    assert _identity_args(tunnel_command(5, 6, user=user, keep_user=keep)) == expected


@pytest.mark.parametrize(("user", "keep", "why"), [("", False, "empty user name"), (" ", False, "empty"), ("bob", True, "not both")])
def test_an_empty_or_contradictory_identity_is_one_line(user: str, keep: bool, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        tunnel_identity(user, keep)


async def test_open_tunnel_refuses_an_empty_user_before_anything_else() -> None:
    with pytest.raises(ConfigError, match="empty user name"):
        async with open_tunnel("/nonexistent/profile.ovpn", tunnel_user=""):
            pass


async def test_open_tunnel_keep_user_starts_the_tunnel_with_keep_user(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The argv that would be started, with no root: the TUN is a pipe, the spawn stops."""
    from helpers.profiles import profile_text

    import trivpn.manager.session as session

    profile = tmp_path / "c.ovpn"
    profile.write_text(profile_text())
    fds: list[int] = []

    def fake_tun(name: str) -> tuple[int, str]:
        r, w = os.pipe()  # stands in for the TUN fd; open_tunnel closes r
        fds.append(w)
        return r, "fake0"

    async def spawn(argv_for: object, tun_fd: int) -> object:
        seen["argv"] = argv_for(7, 8)  # type: ignore[operator]
        raise FatalError("not started in this test")

    seen: dict[str, list[str]] = {}
    monkeypatch.setattr("trivpn.tun.linux.open_tun", fake_tun)
    monkeypatch.setattr(session, "_spawn", spawn)
    try:
        for kwargs, expected in (({"keep_user": True}, ["--keep-user"]), ({}, ["--user", "nobody"])):
            with pytest.raises(FatalError, match="not started"):
                async with open_tunnel(profile, **kwargs):  # type: ignore[arg-type]
                    pass
            assert _identity_args(seen["argv"]) == expected
    finally:
        for fd in fds:
            os.close(fd)


def _tunnel(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "trivpn", "tunnel", *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,  # type: ignore[arg-type]
    )


def test_trivpn_tunnel_refuses_an_empty_user_in_one_line() -> None:
    p = _tunnel("--user", "", "--rpc-read-fd", "0", "--rpc-write-fd", "1", stdin=subprocess.DEVNULL)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "empty user name" in lines[0], lines


def test_trivpn_tunnel_keep_user_stays_root() -> None:
    """As root with --keep-user the process is still uid 0 once it speaks the protocol."""
    if os.geteuid() != 0:
        pytest.skip("NOT RUN: needs root to tell staying root from dropping it")
    to_r, to_w = os.pipe()
    p = _tunnel("--keep-user", "--rpc-read-fd", str(to_r), "--rpc-write-fd", "1", pass_fds=(to_r,))
    os.close(to_r)
    try:
        assert p.stdout is not None
        os.write(to_w, b"trivpn manager 1.0\n")
        assert p.stdout.readline() == b"trivpn tunnel 1.0\n"  # past the point of dropping
        with open(f"/proc/{p.pid}/status") as f:
            uid = next(line for line in f if line.startswith("Uid:")).split()[1:]
        assert uid == ["0"] * 4
    finally:
        os.close(to_w)  # hang-up: the tunnel exits
        try:
            _, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
    assert b"--keep-user: the tunnel runs as root" in err
