"""StatusWriter's schedule (pure, `now` passed in) and the atomic file replacement."""

from __future__ import annotations

import os
import stat
from datetime import UTC
from pathlib import Path

import pytest

from trivpn.status import (
    ClientStatus,
    ServerStatus,
    StatusModelError,
    StatusWriter,
    format_client_status,
    format_server_status,
    write_status_file,
)


def test_first_write_at_once_then_every_interval() -> None:
    w = StatusWriter(100.0, 10)
    assert w.get_timer() == 100.0
    assert not w.handle_timer(99.9)
    assert w.handle_timer(100.0)
    assert w.get_timer() == 110.0
    assert not w.handle_timer(100.0)  # already written for this instant
    assert not w.handle_timer(109.99)
    # A late wake-up writes once and counts the next interval from the actual write.
    assert w.handle_timer(135.0)
    assert w.get_timer() == 145.0


def test_default_interval_is_openvpns_60s() -> None:
    w = StatusWriter(0.0)
    assert w.handle_timer(0.0) and w.get_timer() == 60.0


def test_interval_zero_writes_only_on_request() -> None:
    w = StatusWriter(5.0, 0)
    assert w.handle_timer(5.0)
    assert w.get_timer() is None
    assert not w.handle_timer(1e9)
    w.request(7.0)
    assert w.get_timer() == 7.0 and w.handle_timer(7.5) and w.get_timer() is None


def test_request_pulls_the_next_write_forward() -> None:
    w = StatusWriter(0.0, 60)
    assert w.handle_timer(0.0)
    w.request(3.0)
    assert w.handle_timer(3.0) and w.get_timer() == 63.0


@pytest.mark.parametrize("interval", [-1, float("nan")])
def test_bad_interval(interval: float) -> None:
    with pytest.raises(StatusModelError):
        StatusWriter(0.0, interval)


def test_bad_version() -> None:
    with pytest.raises(StatusModelError):
        StatusWriter(0.0, 1, 4)  # type: ignore[arg-type]  # the point of the test


def test_text_uses_the_configured_version() -> None:
    server = ServerStatus("t", 0)
    client = ClientStatus(0, 1, 2, 3, 4, 5)
    for version in (1, 2, 3):
        w = StatusWriter(0.0, 1, version, tz=UTC)
        assert w.text(server) == format_server_status(server, version, tz=UTC)
        assert w.text(client) == format_client_status(client, tz=UTC)


def test_write_status_file_replaces_atomically(tmp_path: Path) -> None:
    target = tmp_path / "status.log"
    target.write_text("old, longer content that must not survive\n")
    old_inode = target.stat().st_ino
    write_status_file(target, "OpenVPN CLIENT LIST\r\nEND\n")
    assert target.read_bytes() == b"OpenVPN CLIENT LIST\r\nEND\n"  # no newline translation
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    # A reader holding the old file keeps a whole old report: it was renamed over, not rewritten.
    assert target.stat().st_ino != old_inode
    assert os.listdir(tmp_path) == ["status.log"]  # no temporary file left behind


def test_write_status_file_mode(tmp_path: Path) -> None:
    target = tmp_path / "s"
    write_status_file(target, "x\n", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_write_status_file_failure_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    target.mkdir()
    with pytest.raises(OSError):
        write_status_file(target, "x\n")  # cannot rename a file over a directory
    assert os.listdir(tmp_path) == ["dir-in-the-way"]
    with pytest.raises(FileNotFoundError):
        write_status_file(tmp_path / "missing" / "s", "x\n")
