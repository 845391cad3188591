"""Listening addresses as a user reads them: a management port clash names the port (it
said `cannot listen on 127.0.0.1: Address already in use`), the management and metrics
lines bracket an IPv6 host (`http://::1:9100/metrics` is no URL)."""

from __future__ import annotations

import logging
import socket

import pytest
import trio

from trivpn.errors import ConfigError
from trivpn.observe.client import ClientMonitor
from trivpn.observe.metrics import serve_metrics
from trivpn.observe.serving import ManagementSpec, host_port, parse_host_port, start_management


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_management_port_clash_names_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        async with trio.open_nursery() as nursery:
            with pytest.raises(ConfigError, match=f"^management: cannot listen on 127.0.0.1:{port}: "):
                await start_management(nursery, ClientMonitor(), ManagementSpec("127.0.0.1", port))


def test_host_port_brackets_ipv6_and_reads_back() -> None:
    assert host_port("127.0.0.1", 7505) == "127.0.0.1:7505"
    assert host_port("::1", 9100) == "[::1]:9100"
    assert parse_host_port(host_port("::1", 9100), "x") == ("::1", 9100)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_lines_are_bracketed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trivpn")
    monitor = ClientMonitor()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await start_management(nursery, monitor, ManagementSpec("::1", 0))
            listeners = await nursery.start(serve_metrics, monitor, "::1", 0)
            port = listeners[0].socket.getsockname()[1]
            nursery.cancel_scope.cancel()
    assert f"metrics on http://[::1]:{port}/metrics" in caplog.text
    assert "management interface listening on [::1]:" in caplog.text
    assert "listening on [::1]:0" not in caplog.text  # the port bound, not the 0 asked for
