"""`--metrics-addr` scraped over HTTP, and `trivpn status` reading a running instance
(rootless: the serve harness and trivpn's own client on 127.0.0.1, bounded waits)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import trio
from helpers.profiles import shared_pki
from helpers.serving import client_profile, ping, running_server, server_config

from trivpn import api
from trivpn.observe.statuscmd import format_figures, query_figures
from trivpn.profile.profile import parse_profile

BOUND = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _scrape(port: int) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    return body.decode()


def _value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            if name + "{" not in line or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


async def test_server_metrics_and_trivpn_status(tmp_path: Path) -> None:
    pki = shared_pki()
    sock = tmp_path / "mgmt.sock"
    mport = _free_port()
    cfg = server_config(pki, f"management {sock} unix")
    with trio.fail_after(BOUND):
        async with running_server(cfg, metrics_addr=("127.0.0.1", mport)) as (server, tun):
            from helpers.serving import answer_echo

            port = server.addresses[0][1]
            seen: list[bytes] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_echo, tun, seen)
                profile = parse_profile(client_profile(pki, port))
                async with api.connect(profile, reconnect=False) as tunnel:
                    for seq in range(3):
                        await ping(tunnel, "10.8.0.2", "10.8.0.1", seq)
                    text = await _scrape(mport)
                    assert _value(text, "trivpn_connected_clients") == 1
                    assert 'trivpn_packets_total{client="trivpn-test-client",client_id="1",direction="in"} 3.0' in text
                    assert "trivpn_handshake_duration_seconds_count 1.0" in text
                    assert 'reason="data_replayed"' in text and "trivpn_renegotiations_total" in text
                    data = await query_figures(str(sock))
                    (session,) = data["sessions"]
                    assert data["role"] == "server" and session["packets_in"] == 3
                    report = format_figures(data, session["last_handshake"] + 5)
                    assert "client trivpn-test-client (id 1): remote 127.0.0.1:" in report
                    assert "cipher AES-256-GCM, key id 0, key age" in report and "drops none" in report
                    # the command line, as a user runs it (a subprocess: its own trio run)
                    result = await trio.run_process(
                        [sys.executable, "-m", "trivpn", "status", str(sock), "--json"],
                        capture_stdout=True, capture_stderr=True, check=False,
                    )
                    assert result.returncode == 0, result.stderr
                    assert json.loads(result.stdout)["sessions"][0]["client_id"] == 1
                nursery.cancel_scope.cancel()
            text = await _scrape(mport)
            assert _value(text, "trivpn_connected_clients") in (0, 1)  # the client may linger briefly


def test_trivpn_status_unreachable_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trivpn", "status", str(tmp_path / "nothing.sock")],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("trivpn: error: cannot reach the management interface")
    assert len(result.stderr.splitlines()) == 1


async def test_key_age_counts_from_the_handshake_not_the_first_read(tmp_path: Path) -> None:
    """`trivpn status` on a server and on a client: the last handshake is when the session
    came up. Both monitors started the key's clock at the first read of the figures, so a
    first `trivpn status` a minute after the handshake said "key age 0h00m00s" and gave the
    read's time as the last handshake."""
    import time

    from trivpn.engine import Engine, userspace_tun
    from trivpn.observe.client import ClientMonitor
    from trivpn.observe.connect import ObserveOptions, run_connect
    from trivpn.observe.serving import ManagementSpec
    from trivpn.session.config import SessionConfig

    pki = shared_pki()
    server_sock, client_sock = tmp_path / "server.sock", tmp_path / "client.sock"
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki, f"management {server_sock} unix")) as (server, _tun):
            port = server.addresses[0][1]
            config = SessionConfig.from_profile(parse_profile(client_profile(pki, port)))
            monitor = ClientMonitor()
            came_up = trio.Event()
            monitor.on_handshake = lambda _seconds: came_up.set()  # no metrics here to take it
            engine = Engine(config, userspace_tun(), observer=monitor, close_device=True)
            async with trio.open_nursery() as nursery:
                options = ObserveOptions(ManagementSpec(str(client_sock), None))
                nursery.start_soon(run_connect, engine, monitor, options)
                await came_up.wait()
                up = time.time()
                await trio.sleep(1.5)
                for sock in (server_sock, client_sock):
                    (session,) = (await query_figures(str(sock)))["sessions"]
                    assert session["last_handshake"] <= up + 0.5, (sock.name, session["last_handshake"] - up)
                    assert session["key_age"] >= 1.0, (sock.name, session["key_age"])
                nursery.cancel_scope.cancel()
