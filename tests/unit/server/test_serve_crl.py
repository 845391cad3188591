"""crl-verify FILE in the running server: revoked clients are refused, the server stays up,
a replaced CRL file is taken up at the next connection (no restart) and at the next
renegotiation of a connected client (which ends if it is revoked now), and a file that does
not load refuses every new or renegotiating client until it does (fails closed, as OpenVPN).

The real Server with a userspace TUN and trivpn's own clients on 127.0.0.1 (real sockets,
every wait bounded); the file watcher's rules are also checked directly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import client_profile, running_server, server_config

from trivpn import api
from trivpn.errors import ConfigError, SessionRestart
from trivpn.messages import Renegotiate
from trivpn.profile.profile import parse_profile
from trivpn.server.crlfile import LOG_EVERY, CRLFile
from trivpn.server.service import Server
from trivpn.testing.pki import PKI, generate_pki, revoke, with_client
from trivpn.tlssession import keyschedule
from trivpn.tlssession.crl import UNUSABLE_CRL
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


def test_crl_file_fails_closed_until_it_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A changed file that cannot be used refuses every new client (before: the last good CRL
    stayed in force, letting in whoever the new file revokes); the error line comes at once
    for each new problem and then at most every LOG_EVERY seconds; the first client after
    the fix is admitted, also when the fix leaves mtime and size alone (permissions)."""
    pki = shared_pki()
    path = tmp_path / "crl.pem"
    first = revoke(pki)
    path.write_text(first)
    clock = [0.0]
    watch = CRLFile(str(path), first, pki.ca_cert, clock=lambda: clock[0])
    assert watch.current() == first and watch.reloads == 0  # unchanged: not read again
    second = revoke(pki, pki.client_cert)
    path.write_text(second)
    assert watch.current() == second and watch.reloads == 1
    good = os.stat(path)

    def errors() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]

    with caplog.at_level(logging.INFO, logger="trivpn.server"):
        path.write_text(second[: len(second) // 2])  # half written
        assert watch.current() == UNUSABLE_CRL and watch.problem is not None
        assert watch.current() == UNUSABLE_CRL  # the same problem: no second line yet
        assert errors() == [f"crl-verify: cannot use {path} ({watch.problem}): clients are refused (new ones, connected ones when they renegotiate) until it loads"]
        clock[0] = LOG_EVERY
        assert watch.current() == UNUSABLE_CRL
        assert errors()[-1].startswith(f"crl-verify: still cannot use {path}") and "2 clients refused" in errors()[-1]
        path.unlink()
        path.mkdir()  # unreadable (as root too): a read error, a new problem, a line at once
        assert watch.current() == UNUSABLE_CRL and watch.problem == "Is a directory" and len(errors()) == 3
        path.rmdir()
        path.write_text(second)
        os.utime(path, ns=(good.st_atime_ns, good.st_mtime_ns))  # mtime and size as before the problem
        assert watch.current() == second and watch.problem is None and watch.reloads == 2
        assert watch.current() == second and watch.reloads == 2  # and unchanged again: not read
    assert any("loads again" in r.getMessage() for r in caplog.records)


async def test_unusable_new_crl_refuses_the_client_it_revokes_until_fixed(tmp_path: Path) -> None:
    """The operator revokes a client, but the new CRL the running server sees does not load
    (caught half-written): before, the last good CRL stayed in force and let the revoked
    client in; now every new client is refused until the file loads, then the revoked one
    still is and the others get in again."""
    pki = shared_pki()
    late = with_client(pki, "crl-unusable-client")
    crl = tmp_path / "crl.pem"
    crl.write_text(revoke(pki))  # nobody revoked yet
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki, f"crl-verify {crl}")) as (server, tun):
            port = server.addresses[0][1]
            new = revoke(pki, late.client_cert)
            crl.write_text(new[: len(new) // 2])
            for refused in (late, pki):  # fails closed: the good client too
                with pytest.raises(SessionRestart, match="server rejected our certificate"):
                    async with api.connect(parse_profile(client_profile(refused, port)), reconnect=False,
                                           connect_timeout=10):
                        pass
            crl.write_text(new)
            await _refused(late, port)
            async with api.connect(parse_profile(client_profile(pki, port)), reconnect=False) as tunnel:
                await _pings_server(tunnel, tun, 1)


async def _renegotiate_all(server: Server) -> None:
    """The server starts a renegotiation with every client now (as reneg-sec would)."""
    for client in list(server.clients.values()):
        await client.stack.commands.send(Renegotiate("test"))


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if check():
            return
        await trio.sleep(0.02)
    pytest.fail(f"not within 4 s: {what}")


async def test_renegotiation_checks_the_certificate_against_the_crl_of_that_moment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each renegotiation verifies the client's certificate again, against the CRL file as it
    is then (OpenVPN reloads it per key state): a client revoked while connected loses its
    session at the next renegotiation, with a line naming it and why, while a client not
    revoked renegotiates and keeps working; a CRL file that cannot be used at that moment
    refuses too. Before, a session kept its first CRL for ever."""
    monkeypatch.setattr(keyschedule, "SCHEDULED_EXIT", 0.2)  # the alert's grace time, shortened
    pki = shared_pki()
    doomed = with_client(pki, "crl-reneg-revoked")
    crl = tmp_path / "crl.pem"
    crl.write_text(revoke(pki))  # nobody revoked yet

    def names(server: Server) -> list[str]:
        return sorted(c.common_name for c in server.clients.values() if c.common_name)

    def ended(name: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if f"client {name}@" in r.getMessage()
                and " ended: " in r.getMessage()]

    with trio.fail_after(BOUND), caplog.at_level(logging.INFO, logger="trivpn"):
        async with running_server(server_config(pki, f"crl-verify {crl}")) as (server, tun):
            port = server.addresses[0][1]
            async with (
                api.connect(parse_profile(client_profile(doomed, port)), reconnect=False),
                api.connect(parse_profile(client_profile(pki, port)), reconnect=False) as good,
            ):
                await _until(lambda: names(server) == ["crl-reneg-revoked", "trivpn-test-client"], "both up")
                crl.write_text(revoke(pki, doomed.client_cert))
                await _renegotiate_all(server)
                await _until(lambda: names(server) == ["trivpn-test-client"], "the revoked client gone")
                (line,) = ended("crl-reneg-revoked")
                assert "refused at renegotiation: client certificate verification failed: certificate revoked" in line
                (kept,) = server.clients.values()
                await _until(lambda: kept.tls is not None and kept.tls.schedule.renegotiations == 1,
                             "the good client renegotiated")
                await _pings_server(good, tun, 1)  # on the new key
                assert not ended("trivpn-test-client")

                crl.write_text(revoke(pki)[:100])  # caught half-written: unusable
                await _renegotiate_all(server)
                await _until(lambda: not server.clients, "the client refused by the unusable CRL gone")
                (line,) = ended("trivpn-test-client")
                assert "refused at renegotiation" in line and "the crl-verify file cannot be used" in line
