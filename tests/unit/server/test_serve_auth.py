"""auth-user-pass-verify in the running server: a small shell script decides, trivpn's own
clients (with auth-user-pass) connect on 127.0.0.1 (real sockets, every wait bounded).

The script records what it was given (argument count, selected environment, the file's
mode and lines) so the tests check the interface, not just the verdict.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import client_profile, running_server, server_config

from trivpn import api
from trivpn.errors import ConfigError, FatalError
from trivpn.profile.profile import parse_profile
from trivpn.server.authscript import printable_username, script_env
from trivpn.server.statustask import server_status
from trivpn.server.support import check_served
from trivpn.status import format_server_status
from trivpn.testing.pki import PKI
from trivpn.tun.ip import build_echo_request, echo_reply_to

BOUND = 30
CN = "trivpn-test-client"

RECORD = (
    'printf "%s\\n" "argc=$#" "script_type=$script_type" "common_name=$common_name" '
    '"untrusted_ip=$untrusted_ip" "untrusted_port=$untrusted_port" "username=$username" '
    '"password_set=${password+yes}" "X509_0_CN=$X509_0_CN" > "$REC"\n'
)
VIA_ENV = '[ "$username" = alice ] && [ "$password" = "Corr3ct-H0rse pass" ]\n'
VIA_FILE = (
    'stat -c "mode=%a" "$1" >> "$REC"\nprintf "path=%s\\n" "$1" >> "$REC"\n'
    '{ IFS= read -r u; IFS= read -r p; } < "$1"\n'
    '[ "$u" = alice ] && [ "$p" = "Corr3ct-H0rse pass" ]\n'
)


def _script(tmp_path: Path, body: str) -> Path:
    rec = tmp_path / "record.txt"
    script = tmp_path / "verify.sh"
    script.write_text(f"#!/bin/sh\nREC='{rec}'\n{RECORD}{body}")
    script.chmod(0o700)
    return script


def _gone(path: str) -> bool:
    return not os.path.exists(path)


def _record(tmp_path: Path) -> dict[str, str]:
    lines = (tmp_path / "record.txt").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines)


def _connect(pki: PKI, port: int, password: str) -> AbstractAsyncContextManager[api.Tunnel]:
    """A trivpn client logging in as alice (connect_timeout only matters when refused)."""
    profile = parse_profile(client_profile(pki, port))
    return api.connect(profile, username="alice", password=password, reconnect=False, connect_timeout=10)


async def _ping_server(tunnel: api.Tunnel, tun: object) -> None:
    from trivpn.tun.userspace import UserspaceTun

    assert isinstance(tun, UserspaceTun)
    src = tunnel.settings.ifconfig_local or ""
    await tunnel.send(build_echo_request(src, "10.8.0.1", 0x5151, 1, b"auth"))
    for _ in range(16):
        if echo_reply_to(await tun.receive()) is not None:
            return
    pytest.fail("no echo request reached the server's TUN")


@pytest.mark.parametrize(("method", "level", "body"), [("via-env", 3, VIA_ENV), ("via-file", 2, VIA_FILE)])
async def test_right_password_connects_wrong_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str, level: int, body: str
) -> None:
    caplog.set_level(logging.DEBUG)
    pki = shared_pki()
    script = _script(tmp_path, body)
    cfg = server_config(pki, f"script-security {level}\nauth-user-pass-verify '{script}' {method}")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            port = server.addresses[0][1]
            with pytest.raises(FatalError, match="AUTH_FAILED"):
                async with _connect(pki, port, "Wr0ng-Batt3ry"):
                    pass
            async with _connect(pki, port, "Corr3ct-H0rse pass") as tunnel:
                assert tunnel.settings.ifconfig_local == "10.8.0.2"
                await _ping_server(tunnel, tun)
                # the refused session lingers until its scheduled end, without a lease
                (client,) = [c for c in server.clients.values() if c.lease is not None]
                assert client.common_name == CN  # no username-as-common-name
                entries = server_status(server.clients, server.hub, 0.0).clients
                assert [e.username for e in entries if e.virtual_v4 is not None] == ["alice"]
    rec = _record(tmp_path)
    assert rec["script_type"] == "user-pass-verify" and rec["common_name"] == CN == rec["X509_0_CN"]
    assert rec["untrusted_ip"] == "127.0.0.1" and int(rec["untrusted_port"]) > 0
    assert rec["username"] == "alice"
    if method == "via-env":
        assert rec["argc"] == "0" and rec["password_set"] == "yes"
    else:
        assert rec["argc"] == "1" and rec["password_set"] == "" and rec["mode"] == "600"
        assert rec["path"] and _gone(rec["path"])  # removed afterwards
    assert "Corr3ct-H0rse pass" not in caplog.text and "Wr0ng-Batt3ry" not in caplog.text  # never logged


async def test_a_username_with_line_breaks_cannot_write_status_lines(tmp_path: Path) -> None:
    """A script that checks only the password (a one-time code, say) lets any username in;
    the status file must still get one line per client. The username is kept as OpenVPN's
    string_mod_remap_name leaves it: bytes outside printable ASCII become '_'. Before, the
    raw name went into the status file: two CLIENT_LIST lines for one client, one forged."""
    pki = shared_pki()
    script = _script(tmp_path, '[ "$password" = "Corr3ct-H0rse pass" ]\n')
    cfg = server_config(pki, f"script-security 3\nauth-user-pass-verify {script} via-env")
    forged = "al\nCLIENT_LIST,forged,6.6.6.6:1\r\x1b"
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            async with api.connect(profile, username=forged, password="Corr3ct-H0rse pass", reconnect=False,
                                   connect_timeout=10) as tunnel:
                await _ping_server(tunnel, tun)
                status = server_status(server.clients, server.hub, 0.0)
                (entry,) = [e for e in status.clients if e.virtual_v4 is not None]
                assert entry.username == "al_CLIENT_LIST,forged,6.6.6.6:1__"
                text = format_server_status(status, 2)
                assert [line for line in text.splitlines() if line.startswith("CLIENT_LIST")] == [
                    line for line in text.splitlines() if line.startswith("CLIENT_LIST,trivpn-test-client")]
    assert _record(tmp_path)["username"] == "al_CLIENT_LIST,forged,6.6.6.6:1__"


async def test_a_hanging_script_is_refused_after_the_timeout(tmp_path: Path) -> None:
    pki = shared_pki()
    script = _script(tmp_path, "exec sleep 60\n")
    cfg = server_config(pki, f"hand-window 6\nscript-security 3\nauth-user-pass-verify {script} via-env")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            port = server.addresses[0][1]
            start = trio.current_time()
            with pytest.raises(FatalError, match="AUTH_FAILED"):
                async with _connect(pki, port, "Corr3ct-H0rse pass"):
                    pass
            assert trio.current_time() - start >= 3.0  # half the hand window
    assert _record(tmp_path)["script_type"] == "user-pass-verify"  # it did start


async def test_username_as_common_name(tmp_path: Path) -> None:
    pki = shared_pki()
    script = _script(tmp_path, VIA_ENV)
    cfg = server_config(pki, f"script-security 3\nauth-user-pass-verify {script} via-env\nusername-as-common-name")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            port = server.addresses[0][1]
            async with _connect(pki, port, "Corr3ct-H0rse pass") as tunnel:
                await _ping_server(tunnel, tun)
                (client,) = server.clients.values()
                assert client.common_name == "alice" and client.lease is not None
    assert _record(tmp_path)["common_name"] == CN  # the script still saw the certificate's


@pytest.mark.parametrize("extra", ["", "client-connect /bin/true\nscript-security 2"])
async def test_username_as_common_name_needs_a_checked_username(extra: str) -> None:
    """Without auth-user-pass-verify (or management-client-auth) nobody checks the username,
    so it must not become the common name (the config warns "no effect", as OpenVPN sets it
    only after a verification). Before, a client sending username "alice" took alice's
    name: her ccd entry and lease, and her session was retired."""
    pki = shared_pki()
    cfg = server_config(pki, f"username-as-common-name\n{extra}")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            async with api.connect(profile, username="alice", password="x", reconnect=False,
                                   connect_timeout=10) as tunnel:
                await _ping_server(tunnel, tun)
                (client,) = server.clients.values()
                assert client.common_name == CN


def test_script_security_is_enforced() -> None:
    pki = shared_pki()
    with pytest.raises(ConfigError, match="script-security"):
        server_config(pki, "auth-user-pass-verify /bin/true via-env\nscript-security 2")
    with pytest.raises(ConfigError, match="script-security"):
        server_config(pki, "auth-user-pass-verify /bin/true via-file")
    served = server_config(pki, "auth-user-pass-verify /bin/true via-file\nscript-security 2")
    assert check_served(served) == []  # no longer refused by trivpn serve
    assert check_served(dataclasses.replace(served, verify_client_cert="none")) == []  # served now


def test_env_and_username_are_sanitised() -> None:
    assert printable_username("al\nice\x00\u00e9") == "al_ice__"
    env = script_env("bob", "C=US, O=x, CN=bob-cert", ("192.0.2.1", 4321), None, common_name="bob-cert")
    assert env["common_name"] == "bob-cert" and env["X509_0_O"] == "x" and "password" not in env
    assert env["untrusted_port"] == "4321" and env["tls_id_0"] == "C=US, O=x, CN=bob-cert"


@pytest.mark.parametrize(("answer", "reason"), [("1", ""), ("0", "come back tomorrow")])
async def test_deferred_verdict_and_failure_reason(tmp_path: Path, answer: str, reason: str) -> None:
    """Exit status 2 defers: the verdict arrives later in $auth_control_file (written by a
    process the script left behind); a refusal's $auth_failed_reason_file reaches the client."""
    pki = shared_pki()
    body = (f'printf "%s\\n" "{reason}" > "$auth_failed_reason_file"\n'
            f'( sleep 1; echo {answer} > "$auth_control_file" ) &\nexit 2\n')
    script = _script(tmp_path, body)
    cfg = server_config(pki, f"script-security 3\nauth-user-pass-verify {script} via-env")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            port = server.addresses[0][1]
            if answer == "1":
                async with _connect(pki, port, "whatever") as tunnel:
                    await _ping_server(tunnel, tun)
            else:
                with pytest.raises(FatalError, match=reason):
                    async with _connect(pki, port, "whatever"):
                        pass


async def test_a_script_that_cannot_run_is_not_reported_as_slow(tmp_path: Path) -> None:
    """A missing script was refused at once but reported as "did not run or did not answer
    within 29.9993 s"; now the two cases say which, and the time is rounded."""
    from trivpn.server.authscript import run_verify
    from trivpn.server.config_model import AuthScript

    missing = AuthScript(str(tmp_path / "no-such-script"), "via-env")
    verdict = await run_verify(missing, "alice", "pw", "CN=alice", ("127.0.0.1", 1), 29.99934, tmp_dir=str(tmp_path))
    assert verdict.why == "the auth-user-pass-verify script could not run"
    hanging = AuthScript(str(_script(tmp_path, "exec sleep 30\n")), "via-env")
    with trio.fail_after(BOUND):
        verdict = await run_verify(hanging, "alice", "pw", "CN=alice", ("127.0.0.1", 1), 0.54321, tmp_dir=str(tmp_path))
    assert verdict.why == "the auth-user-pass-verify script did not answer within 0.5 s"
