"""The unix socket that cannot be removed at exit is a warning, not the exit's error: with
`user nobody` and a socket in a root-owned directory, SIGTERM ended `trivpn serve` with
exit 1 (`trivpn: error: Permission denied: …`) because only FileNotFoundError was caught."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from trivpn.management import config
from trivpn.management.service import ManagementService


async def test_unremovable_socket_is_a_warning(
    host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    path = str(tmp_path / "mgmt.sock")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(ManagementService(host).serve_unix, path)

            def denied(target: Any, *args: Any, **kwargs: Any) -> None:  # as after dropping root
                raise PermissionError(13, "Permission denied", str(target))

            monkeypatch.setattr(config.os, "unlink", denied)
            with caplog.at_level(logging.WARNING):
                nursery.cancel_scope.cancel()
    assert (tmp_path / "mgmt.sock").is_socket()  # left, and said so
    assert f"management: cannot remove the unix socket {path}: Permission denied" in caplog.text
