"""Management set-up mistakes are one-line ConfigErrors, not tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trivpn.errors import ConfigError
from trivpn.observe.client import ClientMonitor
from trivpn.observe.serving import ManagementSpec, parse_host_port, start_management


async def test_public_address_without_password_is_refused() -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(ConfigError, match="needs a password file"):
            await start_management(nursery, ClientMonitor(), ManagementSpec("0.0.0.0", 0))


async def test_empty_password_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("")
    async with trio.open_nursery() as nursery:
        with pytest.raises(ConfigError, match="is empty"):
            await start_management(nursery, ClientMonitor(), ManagementSpec("127.0.0.1", 0, str(tmp_path / "pw")))


@pytest.mark.parametrize("text", ["localhost", "1.2.3.4:", "x:70000", ":abc"])
def test_bad_metrics_address(text: str) -> None:
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        parse_host_port(text, "--metrics-addr")


def test_metrics_address_forms() -> None:
    assert parse_host_port("127.0.0.1:9100", "x") == ("127.0.0.1", 9100)
    assert parse_host_port("[::1]:9100", "x") == ("::1", 9100)
    assert parse_host_port(":9100", "x") == ("127.0.0.1", 9100)
