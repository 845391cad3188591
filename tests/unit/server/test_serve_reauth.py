"""Renegotiation re-checks the client's credentials, as OpenVPN does: the verify script runs
again for a password, while an auth-gen-token is accepted without it (rootless server,
trivpn's own client; the server renegotiates every 2 s)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import client_profile, running_server, server_config

from trivpn import api
from trivpn.profile.profile import parse_profile
from trivpn.server.service import Server

BOUND = 40


def _count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def _renegotiated(server: Server, times: int) -> None:
    for _ in range(200):
        tls = [c.tls for c in server.clients.values() if c.tls is not None]
        if tls and all(t.schedule.renegotiations >= times for t in tls):
            return
        await trio.sleep(0.1)
    pytest.fail(f"no {times} renegotiations")


@pytest.mark.parametrize(("token", "calls"), [(False, 3), (True, 1)])
async def test_renegotiation_checks_the_password_or_the_token(tmp_path: Path, token: bool, calls: int) -> None:
    pki = shared_pki()
    counter = tmp_path / "calls"
    script = tmp_path / "verify.sh"
    script.write_text(f"#!/bin/sh\necho x >> {counter}\n[ \"$password\" = 'pw' ]\n")
    script.chmod(0o700)
    extra = f"reneg-sec 2\nscript-security 3\nauth-user-pass-verify {script} via-env"
    # renewal 60 s: trivpn's own client does not take up renewed tokens yet (its first one is
    # valid for 120 s, longer than this test)
    cfg = server_config(pki, extra + ("\nauth-gen-token 0 60" if token else ""))
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            async with api.connect(profile, username="alice", password="pw", reconnect=False) as tunnel:
                await _renegotiated(server, 2)
                assert tunnel.settings.ifconfig_local == "10.8.0.2"
                (client,) = server.clients.values()
                assert client.ready is not None and not client.cancel_scope.cancel_called
    assert _count(counter) == calls
