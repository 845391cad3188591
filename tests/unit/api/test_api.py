"""The library API (`trivpn.connect`, `trivpn.serve`) against the real server on loopback:
keyword checking, channel semantics, state and events across a reconnect, typed errors.
No root: both ends use userspace TUNs; traffic stays on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import trio
from helpers.fresh import fresh_stdout
from helpers.profiles import shared_pki
from helpers.serving import answer_echo, client_profile, ping, server_config

import trivpn
import trivpn.api
from trivpn.api import tunnel as tunnel_module
from trivpn.api.failures import raise_cause
from trivpn.profile.profile import load_profile, parse_profile
from trivpn.testing.pki import generate_pki
from trivpn.tlssession.control import Fatal, client_verdict

BOUND = 30  # seconds any one test may take


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="reconect"):
        trivpn.connect("client.ovpn", reconect=False)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="tunn"):
        trivpn.serve("server.conf", tunn="userspace")  # type: ignore[call-arg]


async def test_tunnel_is_a_channel_of_packets() -> None:
    pki = shared_pki()
    with trio.fail_after(BOUND):
        async with trivpn.serve(server_config(pki)) as server, trio.open_nursery() as nursery:
            nursery.start_soon(answer_echo, server, [])
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            async with trivpn.connect(profile, reconnect=False) as tunnel:
                assert isinstance(tunnel, trio.abc.Channel)
                assert tunnel.state.value == "up"
                (client,) = await server.wait_clients(1)
                assert client.addresses == ("10.8.0.2",) and client.ready
                await ping(tunnel, "10.8.0.2", "10.8.0.1", 1)
                c = tunnel.counters
                assert c.packets_out >= 1 and c.packets_in >= 1 and c.dropped == 0
                await tunnel.aclose()
                assert tunnel.state.value == "down"
                with pytest.raises(trio.ClosedResourceError):
                    await tunnel.send(b"\x45" + bytes(19))
                with pytest.raises(trio.ClosedResourceError):
                    await tunnel.receive()
                await tunnel.aclose()  # idempotent
            await server.clients.wait_value(lambda cs: not cs)  # the EXIT freed the slot
            nursery.cancel_scope.cancel()


async def test_end_of_tunnel_is_end_of_channel() -> None:
    pki = shared_pki()
    with trio.fail_after(BOUND):
        async with trivpn.serve(server_config(pki)) as server:
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            async with trivpn.connect(profile, reconnect=False) as tunnel:
                events = tunnel.events()
                tunnel.close()  # the run ends on its own; the application did not aclose
                got = [packet async for packet in tunnel]  # ends at EndOfChannel
                assert got == []
                with pytest.raises(trio.EndOfChannel):
                    await tunnel.receive()
                with pytest.raises(trio.BrokenResourceError):
                    await tunnel.send(b"\x45" + bytes(19))
                seen = [ev async for ev in events]
                assert seen == [trivpn.Down("closed by the application", None)]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_family_takes_the_documented_socket_constants() -> None:
    """docs/api.md: `family=socket.AF_INET` or `AF_INET6`; both were refused ("must be 4 or 6")."""
    pki = shared_pki()
    with trio.fail_after(BOUND):
        async with trivpn.serve(server_config(pki)) as server:
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            async with trivpn.connect(profile, reconnect=False, family=socket.AF_INET) as tunnel:
                assert tunnel.info.remote.endswith("(udp4)")


@pytest.mark.parametrize(
    ("keyword", "value", "why"),
    [
        ("family", socket.AF_UNIX, "family must be socket.AF_INET or socket.AF_INET6"),
        ("hand_window", 0, "hand_window must be"),
        ("hand_window", -1.0, "hand_window must be"),
        ("hand_window", float("nan"), "hand_window must be"),  # was trio's ValueError
        ("connect_timeout", 0, "connect_timeout must be"),  # was a TransportError after 60 s
        ("connect_timeout", -5.0, "connect_timeout must be"),
        ("connect_timeout", float("nan"), "connect_timeout must be"),  # was: never give up
    ],
)
async def test_unusable_arguments_are_config_errors(keyword: str, value: float, why: str) -> None:
    profile = parse_profile(client_profile(shared_pki(), 9))  # never contacted
    with trio.fail_after(BOUND), pytest.raises(trivpn.ConfigError, match=why):
        async with trivpn.connect(profile, **{keyword: value}):  # type: ignore[arg-type]
            pytest.fail("connected")


@pytest.mark.parametrize(
    ("keywords", "why"),
    [
        ({"listeners": [("sctp", "127.0.0.1", 0)]}, "proto must be 'udp' or 'tcp'"),  # was served as UDP
        ({"listeners": [("udp", "127.0.0.1", 70000)]}, "port must be 0..65535"),  # was port 4464
        ({"listeners": [("udp", "127.0.0.1", -1)]}, "port must be 0..65535"),
        ({"listeners": [("udp", "127.0.0.1")]}, r"each must be \(proto, host, port\)"),
        ({"listeners": []}, "at least one"),  # was a server no client could reach
        ({"metrics_addr": ("127.0.0.1", 70000)}, "port must be 0..65535"),
    ],
)
async def test_serve_refuses_unusable_listeners(keywords: dict[str, object], why: str) -> None:
    with trio.fail_after(BOUND), pytest.raises(trivpn.ConfigError, match=why):
        async with trivpn.serve(server_config(shared_pki()), **keywords):  # type: ignore[arg-type]
            pytest.fail("served")


async def test_state_events_and_info_follow_a_reconnect() -> None:
    pki = shared_pki()
    port = _free_udp_port()
    listen = [("udp", "127.0.0.1", port)]
    profile = parse_profile(client_profile(pki, port) + "connect-retry 1 1\n")
    with trio.fail_after(BOUND):
        async with trivpn.serve(server_config(pki), listeners=listen) as first:
            async with trivpn.connect(profile) as tunnel:
                events = tunnel.events()
                before = tunnel.info
                await first.aclose()  # the server says RESTART and goes away
                await tunnel.state.wait_value("reconnecting")
                ev = await events.receive()
                assert isinstance(ev, trivpn.Reconnecting) and "restart" in ev.reason.lower()
                async with trivpn.serve(server_config(pki), listeners=listen) as second, trio.open_nursery() as n:
                    n.start_soon(answer_echo, second, [])
                    await tunnel.state.wait_value("up")
                    ev = await events.receive()
                    assert isinstance(ev, trivpn.Up) and ev.info is tunnel.info and tunnel.info is not before
                    await ping(tunnel, "10.8.0.2", "10.8.0.1", 7)  # same tunnel object, new session
                    assert tunnel.counters.reconnects == 1
                    n.cancel_scope.cancel()


async def test_renegotiation_is_an_event() -> None:
    pki = shared_pki()
    with trio.fail_after(BOUND):
        async with trivpn.serve(server_config(pki)) as server:
            profile = parse_profile(client_profile(pki, server.addresses[0][1]) + "reneg-sec 2\n")
            async with trivpn.connect(profile, reconnect=False) as tunnel:
                async for ev in tunnel.events():
                    assert isinstance(ev, trivpn.Renegotiated), ev
                    assert ev.count == 1 and tunnel.counters.renegotiations == 1
                    break


async def test_errors_are_typed_by_cause() -> None:
    pki = shared_pki()
    other = dataclasses.replace(pki, ca_cert=pki.other_ca_cert)  # trusts another CA only
    with trio.fail_after(BOUND):
        async with trivpn.serve(server_config(pki)) as server:
            port = server.addresses[0][1]
            with pytest.raises(trivpn.CertificateRejected) as info:  # another CA's server
                async with trivpn.connect(parse_profile(client_profile(other, port)), reconnect=False):
                    pass
            assert isinstance(info.value, trivpn.FatalError | trivpn.SessionRestart)
            assert isinstance(info.value.__context__, BaseExceptionGroup)  # the group is kept
            # a server that never answers (another tls-crypt key: it drops every packet)
            silent = dataclasses.replace(pki, static_key=generate_pki().static_key)
            quick = client_profile(silent, port) + "server-poll-timeout 1\nconnect-retry 1 1\n"
            with pytest.raises(trivpn.ConnectTimeout) as timeout:
                async with trivpn.connect(parse_profile(quick), connect_timeout=2):
                    pass
            assert isinstance(timeout.value, trivpn.RetryLimitReached | trivpn.FatalError)
            assert isinstance(timeout.value.__cause__, trivpn.SessionRestart)  # the last attempt's


async def test_application_error_comes_out_as_itself() -> None:
    pki = shared_pki()
    with trio.fail_after(BOUND):
        async with trivpn.serve(server_config(pki)) as server:
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            with pytest.raises(KeyError):
                async with trivpn.connect(profile):
                    raise KeyError("the application's own bug")


async def _fail(exc: BaseException) -> None:
    raise exc  # no checkpoint first: every task fails before a cancellation can reach it


async def test_several_unrelated_errors_keep_the_group() -> None:
    async def run(*errors: BaseException) -> None:
        try:
            async with trio.open_nursery() as nursery:
                for exc in errors:
                    nursery.start_soon(_fail, exc)
        except BaseExceptionGroup as group:
            raise_cause(group)

    with pytest.raises(trivpn.AuthFailed) as one:  # a cause and its side effect: the cause
        await run(trivpn.AuthFailed("no"), trio.BrokenResourceError())
    assert isinstance(one.value.__context__, BaseExceptionGroup)
    with pytest.raises(BaseExceptionGroup) as several:  # two unrelated errors: both kept
        await run(trivpn.AuthFailed("no"), ValueError("a bug"))
    assert {type(e) for e in several.value.exceptions} == {trivpn.AuthFailed, ValueError}


async def test_profile_path_is_read_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[bool] = []

    def load(path: str) -> object:
        try:
            trio.lowlevel.current_task()
            threads.append(False)  # on the event loop's thread: would block every task
        except RuntimeError:
            threads.append(True)  # in a worker thread
        return load_profile(path)

    monkeypatch.setattr(tunnel_module, "load_profile", load)
    with pytest.raises(trivpn.ConfigError, match="cannot read profile"):
        async with trivpn.connect(f"{tmp_path}/missing.ovpn"):
            pass
    assert threads == [True]


async def test_refused_password_is_auth_failed(tmp_path: Path) -> None:
    pki = shared_pki()
    script = tmp_path / "verify.sh"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o700)
    cfg = server_config(pki, f"script-security 3\nauth-user-pass-verify '{script}' via-env")
    with trio.fail_after(BOUND):
        async with trivpn.serve(cfg) as server:
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            with pytest.raises(trivpn.AuthFailed, match="AUTH_FAILED"):
                async with trivpn.connect(profile, username="alice", password="wrong", reconnect=False):
                    pass


def test_control_verdicts_name_their_cause() -> None:
    halt = client_verdict("HALT,maintenance", pushed=True)
    refused = client_verdict("AUTH_FAILED,bad password", pushed=False)
    assert isinstance(halt, Fatal) and halt.error is trivpn.Halted
    assert isinstance(refused, Fatal) and refused.error is trivpn.AuthFailed
    assert issubclass(trivpn.Halted, trivpn.FatalError) and issubclass(trivpn.AuthFailed, trivpn.FatalError)
    # one except clause for both flavours of a refused certificate
    assert issubclass(trivpn.CertificateRestart, trivpn.CertificateRejected)
    assert issubclass(trivpn.CertificateRestart, trivpn.SessionRestart)
    assert issubclass(trivpn.ConnectTimeout, trivpn.RetryLimitReached)


def test_a_client_tunnel_does_not_import_the_server() -> None:
    """`trivpn.connect` (and `trivpn ping`, which uses it) loads no server module; the
    server half of `trivpn.api` comes on first use, under the same names."""
    code = (
        "import sys, trivpn.api as api\n"
        "before = sorted(m for m in sys.modules if m.startswith('trivpn.server'))\n"
        "from trivpn.api import serve, ServedServer, ServedClient\n"
        "from trivpn.api.server import serve as real\n"
        "assert serve is real and api.serve is real and 'serve' in dir(api)\n"
        "assert sys.modules['trivpn.api'].ServedClient is ServedClient\n"
        "print(before)\n"
    )
    assert fresh_stdout(code) == "[]"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        trivpn.api.nope  # type: ignore[attr-defined]  # noqa: B018
