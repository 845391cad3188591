"""The whole client without root: `trivpn.connect` and `Client` against a loopback server.

The peer is `trivpn.testing.loopback_server`: a server-role session stack on a real socket
on 127.0.0.1 (an ephemeral port), whose userspace TUN answers ICMP echo. The client runs
exactly as `trivpn connect` / the library would — profile text, SessionConfig, Engine,
WorkersManager, Client, the socket through networkio — with a userspace TUN, so an echo
request crosses the tunnel both ways and leaving the block sends the exit notification,
which the server's session sees. Real time (real sockets), each test bounded.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import client_profile, running_server, server_config

from trivpn import api
from trivpn.client import Client
from trivpn.engine import Engine, userspace_tun
from trivpn.errors import SessionRestart
from trivpn.messages import ClientReady
from trivpn.profile.profile import parse_profile
from trivpn.session.config import SessionConfig
from trivpn.session.netsettings import TunnelInfo
from trivpn.session.runevents import SessionRetry, SessionUp
from trivpn.testing.loopback_server import LoopbackServerConfig, open_loopback_server
from trivpn.tlssession.keymethod import IV_PROTO_CC_EXIT_NOTIFY
from trivpn.tun.ip import build_echo_request, parse_echo_reply
from trivpn.tun.userspace import UserspaceTun
from trivpn.workers.manager import WorkersManager

#: Generous for two EC handshakes on a loaded two-core machine; typically well under 1 s.
BOUND = 30

CLIENT_IP, SERVER_IP = "10.8.0.2", "10.8.0.1"


async def ping(send: Callable[[bytes], Awaitable[None]], receive: Callable[[], Awaitable[bytes]], seq: int) -> None:
    """One echo request into the tunnel; the matching reply must come back out."""
    await send(build_echo_request(CLIENT_IP, SERVER_IP, 0x7A7A, seq, b"loopback %d" % seq))
    for _ in range(16):  # anything else the tunnel might deliver is skipped, boundedly
        reply = parse_echo_reply(await receive())
        if reply is not None:
            assert (reply.src, reply.dst, reply.ident, reply.seq) == (SERVER_IP, CLIENT_IP, 0x7A7A, seq)
            assert reply.payload == b"loopback %d" % seq
            return
    pytest.fail("no echo reply among 16 packets")


@pytest.mark.parametrize(
    ("proto", "wrap", "reconnect"),
    [("udp", "none", False), ("udp", "tls-crypt", True), ("tcp", "tls-auth", False), ("tcp", "tls-auth", True)],
)
async def test_api_connect_pings_through_a_loopback_server_and_says_goodbye(
    proto: str, wrap: str, reconnect: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """On TCP the server closes the connection as soon as it has read our EXIT, within the
    stop's grace: that close is the goodbye. Leaving the block must neither raise it (reconnect
    off) nor log a reconnect (on), as it did before the client knew it was leaving."""
    caplog.set_level(logging.INFO, logger="trivpn")
    with trio.fail_after(BOUND):
        async with open_loopback_server(LoopbackServerConfig(proto=proto, wrap=wrap), pki=shared_pki()) as server:
            assert server.port > 0
            async with api.connect(parse_profile(server.client_profile()), reconnect=reconnect) as tunnel:
                assert tunnel.settings.ifconfig_local == CLIENT_IP
                assert tunnel.info.remote == f"127.0.0.1:{server.port} ({proto}4)"
                ready = await server.wait_ready()
                assert isinstance(ready, ClientReady) and ready.cipher == tunnel.info.cipher == "AES-256-GCM"
                for seq in range(3):
                    await ping(tunnel.send, tunnel.receive, seq)
                assert server.echoed == 3
            # leaving the block sent EXIT on the control channel (cc-exit is offered)
            ended = await server.wait_ended()
    assert isinstance(ended, SessionRestart) and "EXIT" in str(ended), repr(ended)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("tunnel up: 10.8.0.2/24") for line in lines), lines
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], lines
    # the session's counters line: the three pings went out and came back as data packets
    counters = [line for line in lines if line.startswith("counters: data in ")]
    assert counters and " dropped data: 0 unauthentic, 0 replayed" in counters[-1], counters


async def test_client_runs_under_a_workers_manager_and_exits_by_occ_without_cc_exit() -> None:
    """`Client` itself, as the engine runs it, not offering cc-exit: the exit notification
    is then OCC EXIT in data packets, and the server's session ends on that as well."""
    with trio.fail_after(BOUND):
        async with open_loopback_server(pki=shared_pki()) as server:
            config = SessionConfig.from_profile(parse_profile(server.client_profile()), no_reconnect=True)
            iv = config.iv_proto & ~IV_PROTO_CC_EXIT_NOTIFY
            old = f"IV_PROTO={config.iv_proto}\n"
            assert old in config.peer_info
            config = dataclasses.replace(config, iv_proto=iv, peer_info=config.peer_info.replace(old, f"IV_PROTO={iv}\n"))
            device = UserspaceTun()
            client = Client(config, device=device)
            manager = WorkersManager()
            got: list[TunnelInfo] = []

            async def setup(m: WorkersManager) -> None:
                assert m.nursery is not None
                got.append(await m.nursery.start(client.run, m))
                assert client._live is not None and not client._live.tls.cc_exit
                await server.wait_ready()
                await ping(device.send, device.receive, 1)
                m.request_stop("test over")

            await manager.run(setup)
            ended = await server.wait_ended()
    assert got and got[0].remote == f"127.0.0.1:{server.port} (udp4)" and client.info is got[0]
    assert manager.stop_reason == "test over" and server.echoed == 1
    assert isinstance(ended, SessionRestart) and "exit notification" in str(ended), repr(ended)


@pytest.mark.parametrize("no_reconnect", [False, True])
async def test_tcp_goodbye_before_a_restart_and_before_the_stop(
    no_reconnect: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Against `trivpn serve` on TCP (which closes the connection when it reads EXIT): the
    exit notification before a management SIGUSR1 leads to a restart named SIGUSR1, not to
    a reconnect after "the server closed the TCP connection"; the one before the stop ends
    the run cleanly, also with reconnect off (where the close used to be raised)."""
    caplog.set_level(logging.INFO, logger="trivpn")
    pki = shared_pki()
    ups: list[SessionUp] = []
    retries: list[SessionRetry] = []
    came_up = trio.Event()

    def on_event(ev: object) -> None:
        if isinstance(ev, SessionUp):
            ups.append(ev)
            came_up.set()
        elif isinstance(ev, SessionRetry):
            retries.append(ev)

    with trio.fail_after(BOUND):
        async with running_server(server_config(pki, protos=("tcp",))) as (server, _tun):
            port = server.addresses[0][1]
            config = SessionConfig.from_profile(
                parse_profile(client_profile(pki, port, "tcp")), no_reconnect=no_reconnect
            )
            engine = Engine(config, userspace_tun(), on_event=on_event, close_device=True)
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                if not no_reconnect:  # as the management's `signal SIGUSR1` does
                    came_up = trio.Event()
                    await engine.client.exit_notify(restart="SIGUSR1")
                    engine.restart("SIGUSR1")
                    await came_up.wait()
                engine.request_stop("test over")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(ups) == (1 if no_reconnect else 2)
    assert [r.reason for r in retries] == ([] if no_reconnect else ["SIGUSR1"]), warnings
    assert not [w for w in warnings if "closed" in w], warnings
    assert engine.stop_reason == "test over"


async def test_settings_a_reconnect_cannot_apply_restart_the_session_instead_of_ending_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reconnect whose pushed settings the kernel refuses (a ConfigError from the TUN's
    re-apply): ending the run would take the tunnel's routes away (fail open); the client
    restarts the session instead, and the next one comes up. The first tunnel's failure
    still ends the run (a problem on this host)."""
    import trivpn.client
    from trivpn.errors import ConfigError

    class Applier:
        """Stands for TunApplier on a kernel TUN: the second apply is refused."""

        def __init__(self, ifname: object, add_cleanup: object, *, device: object = None) -> None:
            self.ifname = "tvpn-fake0"
            self.configured = False
            self.calls = 0

        def apply(self, plan: object) -> None:
            self.calls += 1
            self.configured = True
            if self.calls == 2:
                raise ConfigError("cannot add address 10.8.0.2/24: Invalid argument (errno 22)")

        def reaching(self, addresses: object) -> None:
            pass

    monkeypatch.setattr(trivpn.client, "TunApplier", Applier)
    pki = shared_pki()
    ups: list[SessionUp] = []
    retries: list[SessionRetry] = []
    came_up = trio.Event()

    def on_event(ev: object) -> None:
        nonlocal came_up
        if isinstance(ev, SessionUp):
            ups.append(ev)
            came_up.set()
        elif isinstance(ev, SessionRetry):
            retries.append(ev)

    with trio.fail_after(BOUND):
        async with running_server(server_config(pki)) as (server, _tun):
            port = server.addresses[0][1]
            config = SessionConfig.from_profile(parse_profile(client_profile(pki, port) + "connect-retry 0\n"))
            engine = Engine(config, userspace_tun(), on_event=on_event, close_device=True)
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                while len(ups) < 2:
                    came_up = trio.Event()
                    engine.restart("SIGUSR1")
                    await came_up.wait()
                engine.request_stop("test over")
    assert any("cannot apply the pushed settings" in r.reason for r in retries), [r.reason for r in retries]
    assert engine.stop_reason == "test over"
