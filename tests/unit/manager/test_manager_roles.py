"""The two roles over the protocol, each against a raw-bytes peer; and the settings mapping."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import types

import pytest
import trio
import trio.testing
from helpers.manager_peer import RawPeer, frame

from trivpn.errors import RemoteProtocolError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.convert import (
    network_settings_request,
    tun_config_from_request,
    tunnel_overhead,
)
from trivpn.manager.session import ManagedTunnel
from trivpn.manager.speaker import Speaker
from trivpn.manager.tunnel import RPCLogHandler, Tunnel
from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.pki import generate_pki
from trivpn.tun.tunplan import TunConfig

LIMIT = 20


# ---------------------------------------------------------------- settings mapping


@pytest.mark.parametrize(
    "cfg",
    [
        TunConfig(mtu=1500, ipv4=("10.8.0.2", 24, None), ipv6=("fd00::1000", 64)),
        TunConfig(mtu=1400, ipv4=("10.8.0.6", 32, "10.8.0.5"), routes=[("10.9.0.0/16", None, None)]),
        TunConfig(
            ipv4=("10.8.0.2", 24, None),
            routes=[("192.168.7.0/24", "10.8.0.1", None)],
            routes6=[("fd00:203::/64", None, None)],
            redirect_gateway=True,
            redirect_gateway6=True,
            server_addresses=["192.0.2.10", "2001:db8::10"],
        ),
        TunConfig(routes=[("0.0.0.0/1", None, None)]),  # one half alone is a plain route
    ],
)
def test_settings_round_trip(cfg: TunConfig) -> None:
    req = network_settings_request(cfg, remote="192.0.2.10:1194 (udp4)", dns_servers=[], dns_domains=[])
    wire = pb.NetworkSettingsRequest.FromString(req.SerializeToString())
    assert tun_config_from_request(wire) == cfg


def test_settings_request_fields() -> None:
    cfg = TunConfig(mtu=1500, ipv4=("10.8.0.6", 32, "10.8.0.5"), redirect_gateway=True, server_addresses=["192.0.2.10"])
    req = network_settings_request(
        cfg, remote="[2001:db8::1]:443 (tcp6)", dns_servers=["10.8.0.1"], dns_domains=["corp.example"]
    )
    assert req.mtu == 1500 and req.tunnel_remote_address == "2001:db8::1"
    assert req.tunnel_overhead_bytes == 40 + 22 + 24
    assert list(req.ipv4_settings.addrs) == ["10.8.0.6"] and req.ipv4_settings.router == "10.8.0.5"
    assert list(req.ipv4_settings.subnet_masks) == ["255.255.255.255"]
    assert [(r.destination, r.mask) for r in req.ipv4_settings.included_routes] == [
        ("0.0.0.0", "128.0.0.0"),
        ("128.0.0.0", "128.0.0.0"),
    ]
    assert [r.destination for r in req.ipv4_settings.excluded_routes] == ["192.0.2.10"]
    assert list(req.dns_settings.servers) == ["10.8.0.1"]
    assert req.dns_settings.domain_name == "corp.example"
    assert tunnel_overhead("10.0.0.1:1194 (udp4)") == 20 + 8 + 24


@pytest.mark.parametrize(
    ("req", "why"),
    [
        (pb.NetworkSettingsRequest(ipv4_settings={"addrs": ["10.0.0.1"]}), "pair up"),
        (pb.NetworkSettingsRequest(ipv4_settings={"addrs": ["nope"], "subnet_masks": ["255.0.0.0"]}), "IPv4 address"),
        (pb.NetworkSettingsRequest(ipv4_settings={"addrs": ["10.0.0.1"], "subnet_masks": ["255.0.255.0"]}), "mask"),
        (pb.NetworkSettingsRequest(ipv4_settings={"addrs": ["::1"], "subnet_masks": ["255.0.0.0"]}), "IPv4 address"),
        (pb.NetworkSettingsRequest(ipv6_settings={"addrs": ["fd00::1"], "prefix_lengths": [129]}), "prefix"),
        (pb.NetworkSettingsRequest(ipv4_settings={"included_routes": [{"destination": "x", "mask": "1"}]}), "route"),
        (pb.NetworkSettingsRequest(ipv4_settings={"excluded_routes": [{"destination": "10.0.0.0", "mask": "255.0.0.0"}]}), "host routes"),
        (pb.NetworkSettingsRequest(ipv4_settings={"addrs": ["10.0.0.1", "10.0.0.2"], "subnet_masks": ["255.0.0.0"] * 2}), "more than one"),
    ],
)
def test_malformed_settings_are_remote_errors(req: pb.NetworkSettingsRequest, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        tun_config_from_request(req)


@pytest.mark.parametrize(
    ("servers", "domains", "why"),
    [
        (["--interface=eth0"], [], "DNS server"),  # an option for the root-run resolvectl
        (["fe80::1%eth0"], [], "DNS server"),  # queries out of another interface
        (["10.8.0.1#dns.example"], [], "DNS server"),
        ([], ["-i"], "DNS domain"),
        ([], ["~."], "DNS domain"),
        (["10.8.0.1"] * 65, [], "too many"),
    ],
)
async def test_manager_checks_dns_before_configuring_anything(
    monkeypatch: pytest.MonkeyPatch, servers: list[str], domains: list[str], why: str
) -> None:
    """The tunnel is unprivileged: its DNS strings became arguments of resolvectl run as
    root, unchecked, after the addresses and routes were already applied."""
    ran: list[object] = []

    class Recorder:
        def __init__(self, ifname: str) -> None:
            self.applied: list[str] = []

        def apply(self, cfg: TunConfig) -> None:
            ran.append(cfg)

        def undo(self) -> None:
            pass

    monkeypatch.setattr("trivpn.tun.netconfig.NetConfigurator", Recorder)
    managed = ManagedTunnel(None, "tvpn9", None)  # type: ignore[arg-type]
    monkeypatch.setattr(managed._dns, "apply", lambda *args: ran.append(args))
    req = pb.NetworkSettingsRequest(
        ipv4_settings={"addrs": ["10.8.0.2"], "subnet_masks": ["255.255.255.0"]},
        dns_settings={"servers": servers, "search_domains": domains},
    )
    with pytest.raises(RemoteProtocolError, match=why):
        await managed._apply(req)
    assert ran == []
    good = pb.NetworkSettingsRequest(dns_settings={"servers": ["10.8.0.1", "fd00::1"], "search_domains": ["vpn.example"]})
    await managed._apply(good)
    assert ran[1] == (["10.8.0.1", "fd00::1"], ["vpn.example"])


async def test_manager_leaves_unchanged_settings_alone_on_a_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every reconnect sends the settings again: undone and redone, the routes (the
    redirect-gateway halves too) were gone for a moment, traffic leaving outside. Changed
    settings are switched by `reapply` (unreachable stand-ins under the old routes while
    they change, tests/unit/tun/test_reapply.py), never by undo-then-apply."""
    ran: list[str] = []

    class Recorder:
        def __init__(self, ifname: str) -> None:
            self.applied: list[str] = []

        def apply(self, cfg: TunConfig) -> None:
            ran.append(f"apply {cfg.routes}")

        def reapply(self, cfg: TunConfig) -> None:
            ran.append(f"reapply {cfg.routes}")

        def undo(self) -> None:
            ran.append("undo")

    monkeypatch.setattr("trivpn.tun.netconfig.NetConfigurator", Recorder)
    managed = ManagedTunnel(None, "tvpn9", None)  # type: ignore[arg-type]
    v4 = {"addrs": ["10.8.0.2"], "subnet_masks": ["255.255.255.0"]}
    first = pb.NetworkSettingsRequest(ipv4_settings=v4)
    again = pb.NetworkSettingsRequest()
    again.CopyFrom(first)
    other = pb.NetworkSettingsRequest(ipv4_settings={**v4, "included_routes": [{"destination": "10.9.0.0", "mask": "255.255.0.0"}]})
    for req in (first, again, other):
        await managed._apply(req)
    assert ran == ["apply []", "reapply [('10.9.0.0/16', None, None)]"]
    assert managed.network_settings == other


def test_a_hung_resolvectl_is_a_refusal_and_never_breaks_the_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    """subprocess.TimeoutExpired (and OSError in the revert) escaped: the settings answer
    never left, and in open_tunnel's cleanup the TUN fd was then left open."""
    import subprocess

    from trivpn.errors import ConfigError
    from trivpn.manager import session

    calls: list[list[str]] = []

    def hung(argv: list[str], **kwargs: object) -> None:
        calls.append(argv[1:])
        raise subprocess.TimeoutExpired(argv, 10)

    monkeypatch.setattr(session.shutil, "which", lambda name: "/usr/bin/resolvectl")
    monkeypatch.setattr(session.os.path, "isdir", lambda path: True)
    monkeypatch.setattr(session.subprocess, "run", hung)
    dns = session._DNS("tvpn9")
    with pytest.raises(ConfigError, match="resolvectl dns did not answer within 10 s"):
        dns.apply(["10.8.0.1"], ["vpn.example"])
    dns.undo()  # a revert that hangs too is logged, not raised
    assert calls == [["dns", "tvpn9", "10.8.0.1"], ["revert", "tvpn9"]] and not dns.applied


# ---------------------------------------------------------------- tunnel role


async def _tunnel(nursery: trio.Nursery, first: bytes = b"") -> tuple[Speaker, RawPeer, Tunnel]:
    a, b = trio.testing.memory_stream_pair()
    speaker = Speaker(a, "tunnel")
    peer = RawPeer(b)
    await peer.write(b"trivpn manager 1.0\n" + first)
    await nursery.start(speaker.run)
    assert await peer.read_line() == b"trivpn tunnel 1.0\n"
    tunnel = Tunnel(speaker)
    nursery.start_soon(tunnel.serve)
    return speaker, peer, tunnel


async def _read_until(peer: RawPeer, kind: str) -> tuple[pb.TunnelMessage, list[pb.TunnelMessage]]:
    """Frames up to the first of `kind` (bounded: the test's fail_after)."""
    seen: list[pb.TunnelMessage] = []
    while True:
        msg = await peer.read_frame(pb.TunnelMessage)
        assert isinstance(msg, pb.TunnelMessage)
        if msg.WhichOneof("msg") == kind:
            return msg, seen
        seen.append(msg)


async def test_tunnel_start_with_bad_profile_fails_in_one_line_then_stops() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            start = pb.ManagerMessage(
                rpc={"msg_id": 1}, start={"profile_text": "remote\n", "tunnel_file_descriptor": 9}
            )
            _, peer, _ = await _tunnel(nursery, frame(start))
            reply, before = await _read_until(peer, "start")
            assert reply.rpc.response_to == 1 and not reply.start.success
            assert "remote" in reply.start.error_message and "\n" not in reply.start.error_message
            pushed = [m.peer_update.upserted_peers[0] for m in before if m.WhichOneof("msg") == "peer_update"]
            assert pushed and pushed[-1].state == pb.Peer.FAILED
            await peer.write(frame(pb.ManagerMessage(rpc={"msg_id": 2}, stop={})))
            stop, _ = await _read_until(peer, "stop")
            assert stop.rpc.response_to == 2 and stop.stop.success
            await peer.expect_eof()


async def test_tunnel_refuses_a_tun_fd_it_does_not_have() -> None:
    pki = generate_pki()
    text = client_profile(pki, ServerOptions(proto="udp", wrap="tls-crypt"), "127.0.0.1")
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            _, peer, _ = await _tunnel(nursery)
            for msg_id, fd, why in ((1, 1000, "not open"), (2, 1000, "already started")):
                start = pb.ManagerMessage(rpc={"msg_id": msg_id}, start={"profile_text": text, "tunnel_file_descriptor": fd})
                await peer.write(frame(start))
                reply, _ = await _read_until(peer, "start")
                assert reply.rpc.response_to == msg_id and not reply.start.success
                assert why in reply.start.error_message
            nursery.cancel_scope.cancel()


async def test_tunnel_stop_while_connecting_answers_start_then_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Start against a silent loopback UDP port: Stop must end the engine and answer both."""
    # a pipe stands in for the TUN fd (no root needed); the TUN check itself is tested
    # in test_manager_tun_check.py
    def any_fd(fd: int, rpc_fds: frozenset[int] = frozenset()) -> str:
        return "t0"

    monkeypatch.setattr("trivpn.manager.tunnel.check_tun_fd", any_fd)
    pki = generate_pki()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    opts = ServerOptions(proto="udp", wrap="tls-crypt", port=port)
    text = client_profile(pki, opts, "127.0.0.1")
    r, w = os.pipe()  # stands in for the TUN fd: the engine never gets to use it
    try:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                _, peer, tunnel = await _tunnel(nursery)
                start = pb.ManagerMessage(
                    rpc={"msg_id": 1}, start={"profile_text": text, "tunnel_file_descriptor": r, "tunnel_name": "t0"}
                )
                await peer.write(frame(start))
                update, _ = await _read_until(peer, "peer_update")
                assert update.peer_update.upserted_peers[0].state == pb.Peer.CONNECTING
                await peer.write(frame(pb.ManagerMessage(rpc={"msg_id": 2}, get_peer_update={})))
                full, _ = await _read_until(peer, "peer_update")
                while full.rpc.response_to != 2:
                    full, _ = await _read_until(peer, "peer_update")
                assert full.peer_update.upserted_peers[0].name == "127.0.0.1"
                await peer.write(frame(pb.ManagerMessage(rpc={"msg_id": 3}, stop={})))
                start_reply, before = await _read_until(peer, "start")
                assert not start_reply.start.success
                stop_reply, between = await _read_until(peer, "stop")
                assert stop_reply.rpc.response_to == 3 and stop_reply.stop.success
                states = [
                    m.peer_update.upserted_peers[0].state
                    for m in before + between
                    if m.WhichOneof("msg") == "peer_update"
                ]
                assert pb.Peer.DISCONNECTED in states
                await peer.expect_eof()
                assert tunnel.device is not None and tunnel.device.closed
    finally:
        silent.close()
        os.close(w)
        try:
            os.close(r)
        except OSError:
            pass  # the engine's cleanup closed it


async def test_engine_reconnects_are_pushed_to_the_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_engine hands the engine the tunnel's event hook; a SessionRetry pushes
    CONNECTING (the peer stayed CONNECTED through every reconnect before)."""
    from trivpn.manager.tunnel import prepare_engine
    from trivpn.session.runevents import SessionRetry

    monkeypatch.setattr("trivpn.manager.tunnel.check_tun_fd", lambda fd, rpc_fds=frozenset(): "t0")
    text = client_profile(generate_pki(), ServerOptions(proto="udp", wrap="tls-crypt"), "127.0.0.1")
    r, w = os.pipe()
    try:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                _, peer, tunnel = await _tunnel(nursery)

                async def up(info: object) -> None:
                    pass

                start = pb.StartRequest(profile_text=text, tunnel_file_descriptor=r)
                engine, device, _ = prepare_engine(start, up, frozenset(), tunnel._run_event)
                assert engine.client.on_event == tunnel._run_event
                device.close()
                tunnel.core.peer.state = pb.Peer.CONNECTED
                tunnel._run_event(SessionRetry("server restarted", 2.0))
                update, _ = await _read_until(peer, "peer_update")
                assert update.peer_update.upserted_peers[0].state == pb.Peer.CONNECTING
                nursery.cancel_scope.cancel()
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


def test_prepare_engine_closes_the_tun_when_the_start_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A StartRequest that fails after the TUN fd was wrapped (here a bad key derivation)
    left the device open until the tunnel process exited."""
    from trivpn.errors import ConfigError
    from trivpn.manager.tunnel import prepare_engine

    monkeypatch.setattr("trivpn.manager.tunnel.check_tun_fd", lambda fd, rpc_fds=frozenset(): "t0")
    text = client_profile(generate_pki(), ServerOptions(proto="udp", wrap="tls-crypt"), "127.0.0.1")
    r, w = os.pipe()
    try:
        start = pb.StartRequest(profile_text=text, tunnel_file_descriptor=r, key_derivation="bogus")

        async def up(info: object) -> None:
            pass

        with pytest.raises(ConfigError, match="key derivation"):
            prepare_engine(start, up)
        with pytest.raises(OSError):
            os.fstat(r)  # closed by prepare_engine
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


async def test_log_records_become_log_messages() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            speaker, peer, _ = await _tunnel(nursery)
            handler = RPCLogHandler(speaker, trio.lowlevel.current_trio_token())
            logger = logging.getLogger("trivpn.test.manager")
            logger.addHandler(handler)
            try:
                logger.warning("disk %s is %d%% full", "sda", 91)
                try:
                    raise ValueError("inner")
                except ValueError:
                    logger.exception("failed")
            finally:
                logger.removeHandler(handler)
            first, _ = await _read_until(peer, "log")
            assert first.log.level == pb.Log.WARN and first.log.message == "disk sda is 91% full"
            assert list(first.log.logger_names) == ["trivpn", "test", "manager"]
            second, _ = await _read_until(peer, "log")
            assert second.log.level == pb.Log.ERROR
            assert {f.name: f.value for f in second.log.fields}["error"] == "ValueError: inner"
            assert first.rpc.msg_id == 0 and first.rpc.response_to == 0
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- manager role


async def test_manager_role_handles_what_the_tunnel_sends(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(LIMIT):
        a, b = trio.testing.memory_stream_pair()
        speaker = Speaker(a, "manager")
        peer = RawPeer(b)
        await peer.write(b"trivpn tunnel 1.0\n")
        async with trio.open_nursery() as nursery:
            await nursery.start(speaker.run)
            assert await peer.read_line() == b"trivpn manager 1.0\n"
            managed = ManagedTunnel(speaker, "tvpn9", None)  # type: ignore[arg-type]
            nursery.start_soon(managed._serve)
            bad = pb.NetworkSettingsRequest(ipv4_settings={"addrs": ["10.0.0.1"]})
            newer = pb.TunnelMessage(rpc={"msg_id": 3}).SerializeToString() + b"\xfa\x01\x00"
            with caplog.at_level(logging.INFO, logger="trivpn"):
                await peer.write(
                    frame(pb.TunnelMessage(log={"level": pb.Log.WARN, "message": "relayed", "logger_names": ["trivpn", "x"]}))
                    + frame(pb.TunnelMessage(peer_update={"upserted_peers": [{"name": "vpn", "state": pb.Peer.CONNECTED}]}))
                    + frame(pb.TunnelMessage(rpc={"msg_id": 1}, network_settings=bad))
                    + struct.pack(">I", len(newer)) + newer
                )
                replies = [await peer.read_frame(pb.ManagerMessage) for _ in range(2)]
                reply, empty = sorted(replies, key=lambda m: m.rpc.response_to)  # type: ignore[attr-defined]
                assert reply.rpc.response_to == 1 and not reply.network_settings.success  # type: ignore[attr-defined]
                assert "pair up" in reply.network_settings.error_message  # type: ignore[attr-defined]
                assert empty.rpc.response_to == 3 and empty.WhichOneof("msg") is None  # type: ignore[attr-defined]
            assert any(r.name == "trivpn.tunnel" and r.getMessage() == "relayed" and r.levelno == logging.WARNING for r in caplog.records)
            assert managed.peer is not None and managed.peer.state == pb.Peer.CONNECTED
            await peer.stream.aclose()
            updates = [u async for u in managed.peer_updates()]
            assert [u.upserted_peers[0].name for u in updates] == ["vpn"]
            await managed.closed.wait()


@pytest.mark.parametrize("kind", ["peer_update", "start"])  # a pushed update as a request; an unknown one
async def test_manager_role_survives_a_tunnel_hanging_up_before_its_answer(kind: str) -> None:
    """A request answered after the tunnel hung up used to raise RPCClosed out of
    `_serve` (and so out of `open_tunnel`), where the settings answer was already quiet."""
    with trio.fail_after(LIMIT):
        a, b = trio.testing.memory_stream_pair()
        speaker = Speaker(a, "manager")
        peer = RawPeer(b)
        await peer.write(b"trivpn tunnel 1.0\n")
        async with trio.open_nursery() as nursery:
            await nursery.start(speaker.run)
            assert await peer.read_line() == b"trivpn manager 1.0\n"
            managed = ManagedTunnel(speaker, "tvpn9", None)  # type: ignore[arg-type]

            async def apply_after_hang_up(req: pb.NetworkSettingsRequest) -> None:
                await speaker.wait_closed()  # the next request is answered on a closed stream

            managed._apply = apply_after_hang_up  # type: ignore[method-assign]
            nursery.start_soon(managed._serve)
            await peer.write(
                frame(pb.TunnelMessage(rpc={"msg_id": 1}, network_settings={}))
                + frame(pb.TunnelMessage(rpc={"msg_id": 2}, **{kind: {}}))
            )
            await peer.stream.aclose()
            await managed.closed.wait()
            assert [u async for u in managed.peer_updates()] == [pb.PeerUpdate()] * (kind == "peer_update")


async def test_cancelling_the_manager_during_the_handshake_does_not_hang() -> None:
    """The protocol tasks are shielded (they must carry Stop); started with `nursery.start`,
    a cancel that came before the tunnel's header left the speaker in start()'s own
    nursery, where the scope that ends it (cancelled in `_protocol`'s finally) never came:
    `trivpn manage` interrupted in its first second hung for good."""
    from trivpn.manager.session import _protocol

    a, b = trio.testing.memory_stream_pair()
    process = types.SimpleNamespace(pid=4321)
    managed = ManagedTunnel(Speaker(a, "manager"), "tvpn9", process)  # type: ignore[arg-type]
    peer = RawPeer(b)
    start = pb.ManagerMessage(start={"profile_text": "remote x\n"})
    done = trio.Event()
    entered = False

    async def manager(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        nonlocal entered
        with trio.CancelScope() as scope:
            task_status.started(scope)
            async with _protocol(managed, start, 60):
                entered = True
        done.set()

    async with trio.open_nursery() as nursery:
        scope = await nursery.start(manager)
        assert await peer.read_line() == b"trivpn manager 1.0\n"
        scope.cancel()  # before the tunnel's header
        await trio.sleep(0.01)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await peer.write(b"trivpn tunnel 1.0\n")  # the manager hangs up instead (now)
        with trio.move_on_after(2):  # fail_after cannot reach into the shielded hang
            await done.wait()
        hung = not done.is_set()
        await peer.stream.aclose()  # what ends the old hang, so the test itself ends
    assert not hung, "cancelled _protocol did not return"
    assert not entered and managed.speaker.finished


async def test_open_tunnel_yields_once_the_peer_is_connected() -> None:
    """The tunnel pushes CONNECTED before it answers Start; the answer reached `request()`
    first, so the tunnel was handed out with `peer` still None or CONNECTING."""
    from trivpn.manager.session import _protocol

    a, b = trio.testing.memory_stream_pair()
    managed = ManagedTunnel(Speaker(a, "manager"), "tvpn9", types.SimpleNamespace(pid=4321))  # type: ignore[arg-type]
    peer = RawPeer(b)
    connected = pb.TunnelMessage(peer_update={"upserted_peers": [{"state": pb.Peer.CONNECTED, "ip_addrs": ["10.8.0.2/24"]}]})
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:

            async def tunnel_side() -> None:
                await peer.write(b"trivpn tunnel 1.0\n")
                assert await peer.read_line() == b"trivpn manager 1.0\n"
                start = await peer.read_frame(pb.ManagerMessage)
                await peer.write(frame(pb.TunnelMessage(rpc={"response_to": start.rpc.msg_id}, start={"success": True})))  # type: ignore[attr-defined]
                await trio.sleep(0.05)  # the push comes second, as the race made it look
                await peer.write(frame(connected))
                stop = await peer.read_frame(pb.ManagerMessage)
                await peer.write(frame(pb.TunnelMessage(rpc={"response_to": stop.rpc.msg_id}, stop={"success": True})))  # type: ignore[attr-defined]
                await peer.stream.aclose()

            nursery.start_soon(tunnel_side)
            async with _protocol(managed, pb.ManagerMessage(start={}), 10):
                assert managed.peer is not None and managed.peer.state == pb.Peer.CONNECTED
                assert list(managed.peer.ip_addrs) == ["10.8.0.2/24"]


#: A tunnel program that answers the manager's header with garbage, ignores SIGTERM and
#: would then sleep for a minute.
_BAD_TUNNEL = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "os.write(int(sys.argv[sys.argv.index('--rpc-write-fd') + 1]), b'not a header\\n')\n"
    "time.sleep(60)\n"
)


async def test_a_tunnel_that_failed_the_handshake_is_ended_at_once(tmp_path: pytest.TempPathFactory) -> None:
    """Before, `_reap` waited EXIT_TIMEOUT (5 s) for a process that was never sent Stop and
    had no reason to exit before killing it: the handshake error came 5 s late. Now SIGTERM
    at once, SIGKILL after TERM_GRACE (this program ignores SIGTERM)."""
    import sys
    from pathlib import Path

    from helpers.require import require_root

    from trivpn.errors import TrivpnError
    from trivpn.manager.session import TERM_GRACE, open_tunnel

    require_root("manager handshake test (a kernel TUN)", ())
    profile = Path(str(tmp_path)) / "c.ovpn"
    profile.write_text(client_profile(generate_pki(), ServerOptions(proto="udp", wrap="tls-crypt"), "127.0.0.1"))
    pids: list[int] = []

    import trivpn.manager.session as session

    real_spawn = session._spawn

    async def spawn(*args: object) -> object:
        process, stream = await real_spawn(*args)  # type: ignore[arg-type]
        pids.append(process.pid)
        return process, stream

    t0 = trio.current_time()
    with trio.fail_after(LIMIT), pytest.MonkeyPatch.context() as mp:
        mp.setattr(session, "_spawn", spawn)
        with pytest.raises(TrivpnError, match="handshake failed"):
            async with open_tunnel(
                profile, ifname="tvhs%d", tunnel_argv=[sys.executable, "-c", _BAD_TUNNEL]
            ):
                pass
    took = trio.current_time() - t0
    assert took < TERM_GRACE + 2.0, f"the handshake error took {took:.1f} s"
    assert pids
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # killed and reaped


async def test_tunnel_process_serves_over_a_unix_socket(tmp_path: pytest.TempPathFactory) -> None:
    """`--rpc-socket`: the tunnel connects, forwards its logs, answers Stop last, hangs up."""
    from trivpn.manager.process import open_rpc_stream, serve_manager

    path = str(tmp_path / "rpc.sock")  # type: ignore[operator]
    before = logging.getLogger("trivpn").propagate
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(path)
    listener.listen(1)
    with trio.fail_after(LIMIT), listener:
        async with trio.open_nursery() as nursery:
            stream = await open_rpc_stream(None, None, path)
            nursery.start_soon(serve_manager, stream)
            conn, _ = await listener.accept()
            peer = RawPeer(trio.SocketStream(conn))
            await peer.write(b"trivpn manager 1.0\n")
            assert await peer.read_line() == b"trivpn tunnel 1.0\n"
            await peer.write(frame(pb.ManagerMessage(rpc={"msg_id": 4}, get_peer_update={})))
            update, _ = await _read_until(peer, "peer_update")
            assert update.rpc.response_to == 4
            logging.getLogger("trivpn.engine").info("hello manager")
            log_msg, _ = await _read_until(peer, "log")
            assert log_msg.log.message == "hello manager" and log_msg.log.level == pb.Log.INFO
            await peer.write(frame(pb.ManagerMessage(rpc={"msg_id": 5}, stop={})))
            stop, _ = await _read_until(peer, "stop")
            assert stop.rpc.response_to == 5 and stop.stop.success
            await peer.expect_eof()
    root = logging.getLogger("trivpn")  # the forwarding handler was removed again
    assert not any(isinstance(h, RPCLogHandler) for h in root.handlers) and root.propagate == before


async def test_rpc_stream_arguments_are_checked() -> None:
    from trivpn.errors import ConfigError
    from trivpn.manager.process import open_rpc_stream

    with pytest.raises(ConfigError, match="--rpc-read-fd"):
        await open_rpc_stream(None, 5, None)
    with pytest.raises(ConfigError, match="not open"):
        await open_rpc_stream(1000, 1001, None)
    with pytest.raises(ConfigError, match="fd 99999999999 is not open"):  # was "internal error: OverflowError"
        await open_rpc_stream(99999999999, 1, None)
    with pytest.raises(ConfigError, match="cannot connect"):
        await open_rpc_stream(None, None, "/nonexistent/rpc.sock")
