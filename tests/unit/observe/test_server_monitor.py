"""`trivpn serve`'s management interface with management-client-auth (rootless: the server
harness on 127.0.0.1, trivpn's own clients; real sockets, every wait bounded).

A raw management client sees `>CLIENT:CONNECT,CID,KID` with its ENV block, admits the client
with `client-auth` lines (a pushed route the client then has), sees ADDRESS and ESTABLISHED,
reads `status 2`, `>BYTECOUNT_CLI:`, load-stats and the trivpn-status figures, kills the client by
common name (DISCONNECT follows), and refuses another with `client-deny` (AUTH_FAILED with the
client reason). `client-kill CID HALT` sends HALT, which ends the client for good.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import trio
from helpers.mgmt import RawManagement
from helpers.profiles import shared_pki
from helpers.serving import client_profile, running_server, server_config

from trivpn import api
from trivpn.errors import ConfigError, FatalError
from trivpn.profile.profile import parse_profile
from trivpn.server.support import check_served

BOUND = 40
CN = "trivpn-test-client"


async def _env(m: RawManagement) -> dict[str, str]:
    env: dict[str, str] = {}
    for _ in range(200):
        line = await m.line()
        if line == ">CLIENT:ENV,END":
            return env
        assert line.startswith(">CLIENT:ENV,"), line
        key, _, value = line.removeprefix(">CLIENT:ENV,").partition("=")
        env[key] = value
    raise AssertionError("ENV block without END")


async def test_client_auth_status_kill_deny(tmp_path: Path) -> None:
    pki = shared_pki()
    sock = tmp_path / "mgmt.sock"
    cfg = server_config(pki, f"management {sock} unix\nmanagement-client-auth")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, _tun):
            port = server.addresses[0][1]
            m = await RawManagement.unix(str(sock))
            assert (await m.line()).startswith(">INFO:OpenVPN Management Interface Version 5")
            profile = parse_profile(client_profile(pki, port))
            async with trio.open_nursery() as nursery:
                got: list[api.Tunnel] = []
                done, up = trio.Event(), trio.Event()

                async def client() -> None:
                    async with api.connect(profile, reconnect=False, connect_timeout=20) as tunnel:
                        got.append(tunnel)
                        up.set()
                        await done.wait()

                nursery.start_soon(client)
                connect = await m.until(">CLIENT:CONNECT,")
                cid, kid = connect.removeprefix(">CLIENT:CONNECT,").split(",")
                env = await _env(m)
                assert env["common_name"] == CN and env["untrusted_ip"] == "127.0.0.1"
                assert env["X509_0_CN"] == CN  # from the certificate's attributes
                assert env["IV_PROTO"].isdigit() and "IV_VER" in env and env["password"] == env["username"] == ""
                await m.send(f"client-auth {cid} {kid}")
                await m.send('push "route 10.55.0.0 255.255.0.0"')
                assert await m.command("END") == ["SUCCESS: client-auth command succeeded"]
                assert await m.until(">CLIENT:") == f">CLIENT:ADDRESS,{cid},10.8.0.2,1"
                assert await m.line() == f">CLIENT:ESTABLISHED,{cid}"
                established = await _env(m)
                assert established["ifconfig_pool_remote_ip"] == "10.8.0.2"
                assert established["common_name"] == CN
                assert established["X509_0_CN"] == CN
                await up.wait()
                routes = [(r.network, r.netmask) for r in got[0].settings.routes]
                assert ("10.55.0.0", "255.255.0.0") in routes
                status = await m.command("status 2")
                assert status[0].startswith("TITLE,") and status[2].startswith("HEADER,CLIENT_LIST,")
                row = next(s for s in status if s.startswith("CLIENT_LIST,"))
                assert row.split(",")[1:4] == [CN, row.split(",")[2], "10.8.0.2"] and row.split(",")[10] == cid
                assert await m.command("bytecount 1") == ["SUCCESS: bytecount interval changed"]
                assert (await m.until(">BYTECOUNT_CLI:")).startswith(f">BYTECOUNT_CLI:{cid},")
                assert await m.command("bytecount 0") == ["SUCCESS: bytecount interval changed"]
                (load,) = await m.command("load-stats")
                assert load.startswith("SUCCESS: nclients=1,bytesin=")
                (figures,) = await m.command("trivpn-status")
                (session,) = json.loads(figures)["sessions"]
                assert session["common_name"] == CN and session["client_id"] == int(cid)
                assert session["cipher"] == "AES-256-GCM" and session["local_ipv4"] == "10.8.0.2"
                assert await m.command("kill nobody") == ["ERROR: common name 'nobody' not found"]
                assert await m.command(f"kill {CN}") == [f"SUCCESS: common name '{CN}' found, 1 client(s) killed"]
                assert await m.until(">CLIENT:") == f">CLIENT:DISCONNECT,{cid}"
                gone = await _env(m)
                assert int(gone["bytes_received"]) >= 0 and gone["common_name"] == CN
                done.set()
                nursery.cancel_scope.cancel()

            # a second client is refused with client-deny: AUTH_FAILED carries the client reason
            async def refused() -> None:
                with pytest.raises(FatalError, match="not today"):
                    async with api.connect(profile, reconnect=False, connect_timeout=20):
                        pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(refused)
                connect = await m.until(">CLIENT:CONNECT,")
                cid, kid = connect.removeprefix(">CLIENT:CONNECT,").split(",")
                await _env(m)
                assert await m.command(f'client-deny {cid} {kid} "bad client" "not today"') == [
                    "SUCCESS: client-deny command succeeded"
                ]
                assert await m.command(f"client-auth-nt {cid} {kid}") == ["ERROR: client-auth command failed"]


async def test_client_kill_halt(tmp_path: Path) -> None:
    pki = shared_pki()
    sock = tmp_path / "mgmt.sock"
    cfg = server_config(pki, f"management {sock} unix\nmanagement-client-auth")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, _tun):
            port = server.addresses[0][1]
            m = await RawManagement.unix(str(sock))
            profile = parse_profile(client_profile(pki, port))

            async def client() -> None:
                with pytest.raises(FatalError, match="HALT"):
                    async with api.connect(profile, reconnect=True, connect_timeout=20) as tunnel:
                        await trio.sleep_forever()
                        del tunnel

            async with trio.open_nursery() as nursery:
                nursery.start_soon(client)
                cid, kid = (await m.until(">CLIENT:CONNECT,")).removeprefix(">CLIENT:CONNECT,").split(",")
                await m.command(f"client-auth-nt {cid} {kid}")
                await m.until(f">CLIENT:ESTABLISHED,{cid}")
                assert await m.command(f"client-kill {cid} HALT") == ["SUCCESS: client-kill command succeeded"]
                assert await m.command("client-kill 999") == ["ERROR: client-kill command failed"]


def test_management_client_auth_needs_management() -> None:
    cfg = server_config(shared_pki(), "management-client-auth")
    with pytest.raises(ConfigError, match="needs 'management'"):
        check_served(cfg)


async def test_renegotiation_asks_again_reauth(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """reneg-sec 2: `>CLIENT:REAUTH,CID,1` with its ENV; the new key is used once admitted."""
    caplog.set_level(logging.INFO, logger="trivpn")
    pki = shared_pki()
    sock = tmp_path / "mgmt.sock"
    cfg = server_config(pki, f"management {sock} unix\nmanagement-client-auth\nreneg-sec 2")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, _tun):
            port = server.addresses[0][1]
            m = await RawManagement.unix(str(sock))
            profile = parse_profile(client_profile(pki, port))
            async with trio.open_nursery() as nursery:

                async def client() -> None:
                    async with api.connect(profile, reconnect=False, connect_timeout=20):
                        await trio.sleep_forever()

                nursery.start_soon(client)
                cid, kid = (await m.until(">CLIENT:CONNECT,")).removeprefix(">CLIENT:CONNECT,").split(",")
                assert kid == "0"
                await _env(m)
                await m.command(f"client-auth-nt {cid} {kid}")
                assert await m.command("log on") == ["SUCCESS: real-time log notification set to ON"]
                reauth = await m.until(">CLIENT:REAUTH,")
                assert reauth == f">CLIENT:REAUTH,{cid},1"
                env = await _env(m)
                assert env["common_name"] == CN and "IV_VER" in env
                assert await m.command(f"client-auth-nt {cid} 1") == ["SUCCESS: client-auth command succeeded"]
                await m.until(lambda t: t.startswith(">LOG:") and "new data keys in use: key id 1" in t)
                (figures,) = await m.command("trivpn-status")
                (session,) = json.loads(figures)["sessions"]
                assert session["key_id"] == 1 and session["renegotiations"] == 1
                nursery.cancel_scope.cancel()
