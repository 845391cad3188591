"""`trivpn connect`'s management interface against a running `trivpn serve` (rootless: both
on 127.0.0.1 with userspace TUNs; real sockets, every wait bounded).

The client runs as `trivpn connect` runs it with management configured (`run_connect`:
engine + ClientMonitor + management on a unix socket). A raw management client checks the
live answers (state, status, bytecount, the trivpn-status figures), the real-time lines
(`>STATE:` from CONNECTED through RECONNECTING,SIGUSR1 back to CONNECTED, `>HOLD:` and
`>PASSWORD:` before the first attempt) and that `signal SIGTERM` ends the run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from pathlib import Path

import pytest
import trio
from helpers.mgmt import RawManagement
from helpers.profiles import shared_pki
from helpers.serving import client_profile, running_server, server_config

from trivpn.engine import Engine, userspace_tun
from trivpn.observe.client import ClientMonitor
from trivpn.observe.connect import ObserveOptions, run_connect
from trivpn.observe.serving import ManagementSpec
from trivpn.profile.profile import parse_profile
from trivpn.session.config import SessionConfig

BOUND = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _scrape(port: int) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK")
    return data.decode()


async def test_state_status_bytecount_signals(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trivpn")  # as `trivpn connect` sets it
    pki = shared_pki()
    sock = tmp_path / "mgmt.sock"
    status_file = tmp_path / "client.status"
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki)) as (server, _tun):
            port = server.addresses[0][1]
            config = SessionConfig.from_profile(parse_profile(client_profile(pki, port)))
            monitor = ClientMonitor(hold=True)
            engine = Engine(config, userspace_tun(), observer=monitor, close_device=True)
            mport = _free_port()
            options = ObserveOptions(
                ManagementSpec(str(sock), None), (str(status_file), 1.0), ("127.0.0.1", mport)
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_connect, engine, monitor, options)
                await monitor.ready.wait()
                m = await RawManagement.unix(str(sock))
                assert (await m.line()).startswith(">INFO:OpenVPN Management Interface Version 5")
                assert await m.line() == ">HOLD:Waiting for hold release:0"
                assert await m.command("hold") == ["SUCCESS: hold=1"]
                assert await m.command("state on") == ["SUCCESS: real-time state notification set to ON"]
                assert await m.command("hold release") == ["SUCCESS: hold release succeeded"]
                connected = await m.until(lambda t: t.startswith(">STATE:") and ",CONNECTED," in t)
                fields = connected.removeprefix(">STATE:").split(",")
                assert fields[1:6] == ["CONNECTED", "SUCCESS", "10.8.0.2", "127.0.0.1", str(port)]
                (state,) = await m.command("state")
                assert state.split(",")[1] == "CONNECTED"
                history = await m.command("state all")
                names = [h.split(",")[1] for h in history]
                assert names[:2] == ["CONNECTING", "WAIT"] and names[-1] == "CONNECTED", names
                logs = await m.command("log all")
                assert any(",I,tunnel up: 10.8.0.2/24" in line for line in logs), logs
                assert await m.command("log on") == ["SUCCESS: real-time log notification set to ON"]
                status = await m.command("status 2")
                assert status[0] == "OpenVPN STATISTICS" and status[2].startswith("TUN/TAP read bytes,")
                assert await m.command("bytecount 1") == ["SUCCESS: bytecount interval changed"]
                count = await m.until(">BYTECOUNT:")
                assert [int(x) >= 0 for x in count.removeprefix(">BYTECOUNT:").split(",")] == [True, True]
                (figures,) = await m.command("trivpn-status")
                data = json.loads(figures)
                (session,) = data["sessions"]
                assert data["role"] == "client" and data["state"] == "CONNECTED"
                assert session["cipher"] == "AES-256-GCM" and session["key_id"] == 0
                assert session["local_ipv4"] == "10.8.0.2" and session["handshake_seconds"] > 0
                assert await m.command("bytecount 0") == ["SUCCESS: bytecount interval changed"]
                metrics = await _scrape(mport)
                assert "trivpn_tunnel_up 1.0" in metrics
                assert "trivpn_handshake_duration_seconds_count 1.0" in metrics
                assert 'trivpn_bytes_total{direction="out"}' in metrics
                assert (await m.command("kill x"))[0].startswith("ERROR: The 'kill' command is not supported")
                # SIGUSR1: the session restarts, and comes back up
                assert await m.command("hold off") == ["SUCCESS: hold flag set to OFF"]
                assert await m.command("signal SIGUSR1") == ["SUCCESS: signal SIGUSR1 thrown"]
                await m.until(lambda t: t.startswith(">STATE:") and ",RECONNECTING,SIGUSR1," in t)
                assert any(t.startswith(">LOG:") and ",I,SIGUSR1 received" in t for t in m.seen), m.seen[-30:]
                await m.until(lambda t: t.startswith(">STATE:") and ",CONNECTED,SUCCESS," in t)
                assert status_file.read_text().startswith("OpenVPN STATISTICS\nUpdated,")
                os.kill(os.getpid(), signal.SIGUSR2)  # the OS signal: the report to the log
                await m.until(lambda t: t.startswith(">LOG:") and t.endswith(",I,OpenVPN STATISTICS"))
                assert await m.command("signal SIGTERM") == ["SUCCESS: signal SIGTERM thrown"]
                await m.until(lambda t: t.startswith(">STATE:") and ",EXITING,SIGTERM," in t)
            assert engine.stop_reason == "SIGTERM"
    assert not sock.exists()  # the socket file is removed at the end


async def test_query_passwords_and_auth_retry(tmp_path: Path) -> None:
    """`>PASSWORD:Need 'Auth'` before connecting; a refused password with auth-retry
    interact gets `>PASSWORD:Verification Failed` and a new query."""
    pki = shared_pki()
    script = tmp_path / "verify.sh"
    script.write_text('#!/bin/sh\n[ "$username" = alice ] && [ "$password" = right ]\n')
    script.chmod(0o700)
    sock = tmp_path / "mgmt.sock"
    cfg = server_config(pki, f"script-security 3\nauth-user-pass-verify {script} via-env")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, _tun):
            port = server.addresses[0][1]
            profile = parse_profile(client_profile(pki, port) + "auth-user-pass\n")
            config = SessionConfig.from_profile(profile)
            monitor = ClientMonitor(query_passwords=True, auth_retry="interact")
            monitor.need_credentials(True)
            engine = Engine(config, userspace_tun(), observer=monitor)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_connect, engine, monitor, ObserveOptions(ManagementSpec(str(sock), None)))
                await monitor.ready.wait()
                m = await RawManagement.unix(str(sock))
                await m.until(">PASSWORD:Need 'Auth' username/password")
                assert await m.command('username "Auth" alice') == [
                    "SUCCESS: 'Auth' username entered, but not yet verified"
                ]
                assert await m.command('password "Auth" wrong') == [
                    "SUCCESS: 'Auth' password entered, but not yet verified"
                ]
                await m.until(">PASSWORD:Verification Failed: 'Auth'")
                await m.until(">PASSWORD:Need 'Auth' username/password")
                await m.command('username "Auth" alice')
                await m.command('password "Auth" right')
                assert await m.command("state on") == ["SUCCESS: real-time state notification set to ON"]
                await m.until(lambda t: t.startswith(">STATE:") and ",CONNECTED,SUCCESS," in t)
                await m.command("signal SIGTERM")
