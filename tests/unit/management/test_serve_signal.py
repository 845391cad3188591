"""The management `signal` command on `trivpn serve` does what the OS signal of that name
does, with OpenVPN's reply (`SUCCESS: signal SIGHUP thrown`). Before, SIGHUP and SIGUSR1
were answered with an ERROR and did nothing, and SIGTERM stopped without the log line.

Through the sans-IO core with the server's real management host (a Server built, not run),
and one exchange with a running server on a unix socket."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from helpers.mgmt import RawManagement
from helpers.profiles import shared_pki
from helpers.serving import server_config

import trivpn
from trivpn.management.core import ManagementConnection
from trivpn.observe.server import ServerMonitor
from trivpn.server.service import Server

NO_RELOAD = "shutting down (a server run through the API does not restart by itself)"


def _say(conn: ManagementConnection, line: str) -> str:
    conn.receive_data(line.encode() + b"\n", 0.0)
    return conn.data_to_send().decode()


@pytest.mark.parametrize(
    ("name", "logged"),
    [("SIGHUP", f"SIGHUP received, {NO_RELOAD}"), ("SIGUSR1", f"SIGUSR1 received, {NO_RELOAD}"),
     ("SIGTERM", "SIGTERM received, shutting down")],
    ids=["SIGHUP", "SIGUSR1", "SIGTERM"],
)
def test_signal_stops_as_the_os_signal_does(name: str, logged: str, caplog: pytest.LogCaptureFixture) -> None:
    server = Server(server_config(shared_pki()))
    conn = ManagementConnection(ServerMonitor(server))
    conn.data_to_send()  # the greeting
    with caplog.at_level(logging.INFO, logger="trivpn"):
        assert _say(conn, f"signal {name}") == f"SUCCESS: signal {name} thrown\r\n"
    assert logged in caplog.text  # the OS signal's line, word for word
    assert server.manager.stop_reason == name


def test_signal_sigusr2_logs_the_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = Server(server_config(shared_pki(), f"status {tmp_path}/status.txt 60\nstatus-version 2"))
    conn = ManagementConnection(ServerMonitor(server))
    conn.data_to_send()
    with caplog.at_level(logging.INFO, logger="trivpn"):
        assert _say(conn, "signal SIGUSR2") == "SUCCESS: signal SIGUSR2 thrown\r\n"
    assert "HEADER,CLIENT_LIST," in caplog.text  # the report, in the configured version
    assert server.manager.stop_reason is None  # and nothing else


async def test_signal_sighup_stops_a_running_server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sock = tmp_path / "mgmt.sock"
    with trio.fail_after(20), caplog.at_level(logging.INFO, logger="trivpn"):
        async with trivpn.serve(server_config(shared_pki(), f"management {sock} unix")) as served:
            m = await RawManagement.unix(str(sock))
            assert (await m.line()).startswith(">INFO:OpenVPN Management Interface Version 5")
            await m.stream.send_all(b"signal SIGHUP\r\n")
            assert await m.until("SUCCESS:") == "SUCCESS: signal SIGHUP thrown"
            await served._ended.wait()  # stopped by itself: the clients told, the TUN closed
    assert f"SIGHUP received, {NO_RELOAD}" in caplog.text
    assert served.server.manager.stop_reason == "SIGHUP" and not sock.exists()
