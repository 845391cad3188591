"""crl-verify FILE in the running server: revoked clients are refused, the server stays up,
and a replaced CRL file is taken up at the next connection (no restart).

The real Server with a userspace TUN and trivpn's own clients on 127.0.0.1 (real sockets,
every wait bounded); the file watcher's rules are also checked directly.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import client_profile, running_server, server_config

from trivpn import api
from trivpn.errors import ConfigError, SessionRestart
from trivpn.profile.profile import parse_profile
from trivpn.server.crlfile import CRLFile
from trivpn.server.service import Server
from trivpn.testing.pki import PKI, generate_pki, revoke, with_client
from trivpn.tun.ip import build_echo_request, echo_reply_to, parse_echo_reply
from trivpn.tun.userspace import UserspaceTun

BOUND = 30
SERVER_IP = "10.8.0.1"


async def _pings_server(tunnel: api.Tunnel, tun: UserspaceTun, seq: int) -> None:
    """An echo request from the client reaches the server's TUN; our answer gets back."""
    src = tunnel.settings.ifconfig_local or ""
    await tunnel.send(build_echo_request(src, SERVER_IP, 0x5151, seq, b"crl %d" % seq))
    for _ in range(16):
        reply = echo_reply_to(await tun.receive())
        if reply is not None:
            await tun.send(reply)
            break
    else:
        pytest.fail("no echo request on the server's TUN among 16 packets")
    for _ in range(16):
        got = parse_echo_reply(await tunnel.receive())
        if got is not None and got.seq == seq:
            return
    pytest.fail("no echo reply among 16 packets")


async def _refused(pki: PKI, port: int) -> None:
    # a TLS alert is a restart for a client (anyone on the path could forge one); with
    # reconnect=False the session's own error comes out
    with pytest.raises(SessionRestart, match="server rejected our certificate.*revoked"):
        async with api.connect(parse_profile(client_profile(pki, port)), reconnect=False, connect_timeout=10):
            pass


async def test_revoked_client_is_refused_and_a_good_one_then_pings(tmp_path: Path) -> None:
    pki = shared_pki()
    good = with_client(pki, "crl-good-client")
    crl = tmp_path / "crl.pem"
    crl.write_text(revoke(pki, pki.client_cert))
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki, f"crl-verify {crl}")) as (server, tun):
            port = server.addresses[0][1]
            await _refused(pki, port)
            # the refused session lingers a moment (to deliver the alert) but never got a name
            assert all(not c.common_name for c in server.clients.values())
            async with api.connect(parse_profile(client_profile(good, port)), reconnect=False) as tunnel:
                await _pings_server(tunnel, tun, 1)
                assert [c.common_name for c in server.clients.values() if c.common_name] == ["crl-good-client"]


async def test_revoking_while_running_refuses_the_next_connection(tmp_path: Path) -> None:
    pki = shared_pki()
    late = with_client(pki, "crl-late-client")
    crl = tmp_path / "crl.pem"
    crl.write_text(revoke(pki))  # nobody revoked yet
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki, f"crl-verify {crl}")) as (server, tun):
            port = server.addresses[0][1]
            async with api.connect(parse_profile(client_profile(late, port)), reconnect=False) as tunnel:
                await _pings_server(tunnel, tun, 1)
            crl.write_text(revoke(pki, late.client_cert))  # longer text: size and mtime change
            await _refused(late, port)
            assert server.parts.crl_file is not None and server.parts.crl_file.reloads == 1
            async with api.connect(parse_profile(client_profile(pki, port)), reconnect=False) as tunnel:
                await _pings_server(tunnel, tun, 2)


def test_bad_crl_file_is_a_one_line_config_error_at_start(tmp_path: Path) -> None:
    pki = shared_pki()
    crl = tmp_path / "crl.pem"
    crl.write_text("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(ConfigError, match="cannot read the CRL"):
        Server(server_config(pki, f"crl-verify {crl}"))
    foreign = generate_pki()
    crl.write_text(revoke(foreign))
    with pytest.raises(ConfigError, match="not signed by the configured CA"):
        Server(server_config(pki, f"crl-verify {crl}"))


def test_crl_dir_stays_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dir"):
        server_config(shared_pki(), f"crl-verify {tmp_path} dir")


def test_crl_file_keeps_the_last_good_crl(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = shared_pki()
    path = tmp_path / "crl.pem"
    first = revoke(pki)
    path.write_text(first)
    watch = CRLFile(str(path), first, pki.ca_cert)
    assert watch.current() == first and watch.reloads == 0  # unchanged: not read again
    second = revoke(pki, pki.client_cert)
    path.write_text(second)
    assert watch.current() == second and watch.reloads == 1
    with caplog.at_level(logging.WARNING, logger="trivpn.server"):
        path.write_text("garbage, half written")
        assert watch.current() == second  # never falls back to "no CRL"
        path.unlink()
        assert watch.current() == second
    assert len([r for r in caplog.records if "keeping the last CRL" in r.getMessage()]) == 2
    path.write_text(second + "\n")  # readable again (size changed): taken up
    assert watch.current() == second + "\n" and watch.reloads == 2
