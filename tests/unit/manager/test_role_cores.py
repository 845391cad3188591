"""TunnelCore and ManagerCore without I/O: routing, one Start, Stop order, peer state, timer."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivpn.errors import ConfigError, FatalError, RemoteProtocolError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.managercore import (
    ApplySettings,
    EmptyReply,
    ManagerCore,
    NotePeerUpdate,
    RelayLog,
)
from trivpn.manager.rpc import Notice, Request
from trivpn.manager.tunnelcore import Reply, StartTunnel, StopTunnel, TunnelCore
from trivpn.tun.tunplan import TunConfig


def _tm(**fields: Any) -> pb.TunnelMessage:
    """A TunnelMessage from protobuf's dict shorthand (typed loosely, as the stubs cannot)."""
    return pb.TunnelMessage(**fields)


def _mm(**fields: Any) -> pb.ManagerMessage:
    return pb.ManagerMessage(**fields)


def _req(msg_id: int, **fields: Any) -> Request:
    msg = _mm(rpc={"msg_id": msg_id}, **fields)
    return Request(msg_id, msg.WhichOneof("msg"), msg)


def _states(core: TunnelCore, counters: tuple[int, int] | None = None) -> list[pb.Peer.State.ValueType]:
    out = []
    for m in core.updates_to_send(counters):
        assert m.rpc.msg_id == 0 and m.rpc.response_to == 0  # pushed, one-way
        out.append(m.peer_update.upserted_peers[0].state)
    return out


INFO = SimpleNamespace(
    tun_config=TunConfig(mtu=1500, ipv4=("10.8.0.2", 24, None), ipv6=("fd00::1000", 64)),
    remote="192.0.2.10:1194 (udp4)",
    settings=SimpleNamespace(dns_servers=["10.8.0.1"], dns_domains=["corp.example"]),
    cipher="AES-256-GCM",
    key_derivation="tls-ekm",
)


# ---------------------------------------------------------------- tunnel role


def test_requests_are_routed() -> None:
    core = TunnelCore()
    assert core.receive_request(Notice("log", _mm()), None) is None
    assert isinstance(core.receive_request(_req(1, stop={}), None), StopTunnel)
    assert isinstance(core.receive_request(_req(2, start={}), None), StartTunnel)
    full = core.receive_request(_req(3, get_peer_update={}), (10, 20))
    assert isinstance(full, Reply) and full.request.msg_id == 3
    peer = full.message.peer_update.upserted_peers[0]
    assert (peer.tx_bytes, peer.rx_bytes) == (10, 20)
    odd = core.receive_request(_req(4, network_settings={}), None)
    assert isinstance(odd, Reply) and odd.message == _tm()
    assert core.updates_to_send(None) == []  # routing changes no state


def test_one_start_per_process() -> None:
    core = TunnelCore()
    assert core.claim_start() is None and core.started
    refusal = core.claim_start()
    assert refusal is not None
    assert not refusal.start.success and refusal.start.error_message == "already started"


def test_start_that_cannot_prepare_fails_in_one_message() -> None:
    core = TunnelCore()
    core.claim_start()
    answer = core.start_failed(str(ConfigError("bad profile")))
    assert not answer.start.success and answer.start.error_message == "bad profile"
    assert _states(core) == [pb.Peer.FAILED]
    assert core.engine_done and not core.stop_engine()  # nothing left to stop


def test_network_settings_then_up_then_stop() -> None:
    core = TunnelCore()
    core.claim_start()
    core.engine_prepared("vpn.example")
    core.engine_started()
    req = core.network_settings_request(INFO)
    assert req.network_settings.tunnel_remote_address == "192.0.2.10"
    assert list(req.network_settings.dns_settings.servers) == ["10.8.0.1"]
    ok = _mm(network_settings={"success": True})
    core.receive_network_settings(ok, INFO, wall=1_700_000_000.5)
    assert core.up and core.start_reply().start.success
    p = core.peer
    assert (p.name, p.remote, p.cipher, p.key_derivation) == ("vpn.example", INFO.remote, "AES-256-GCM", "tls-ekm")
    assert p.ip_addrs == ["10.8.0.2/24", "fd00::1000/64"]
    msg = p.to_message(None)
    assert msg.last_handshake.ToNanoseconds() == 1_700_000_000_500_000_000
    assert _states(core) == [pb.Peer.CONNECTING, pb.Peer.CONNECTED]
    assert core.stop_engine()
    core.engine_finished("")
    assert _states(core) == [pb.Peer.DISCONNECTING, pb.Peer.DISCONNECTED]
    assert not core.stop_engine()
    assert core.stop_reply().stop.success


def test_a_reconnect_reports_connecting_again() -> None:
    """The engine reconnecting (server restart, ping-restart) left the peer CONNECTED."""
    core = TunnelCore()
    core.claim_start()
    core.engine_started()
    core.session_retry()  # a first attempt that failed: still connecting, nothing new
    core.receive_network_settings(_mm(network_settings={"success": True}), INFO, wall=1.0)
    assert _states(core) == [pb.Peer.CONNECTING, pb.Peer.CONNECTED]
    core.session_retry()
    core.session_retry()
    assert _states(core) == [pb.Peer.CONNECTING]
    core.receive_network_settings(_mm(network_settings={"success": True}), INFO, wall=2.0)
    assert _states(core) == [pb.Peer.CONNECTED]
    assert core.stop_engine()
    core.session_retry()  # a stop under way stays DISCONNECTING
    core.engine_finished("")
    core.session_retry()
    assert _states(core) == [pb.Peer.DISCONNECTING, pb.Peer.DISCONNECTED]


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (_mm(), "did not answer the network settings"),
        (_mm(network_settings={"success": False}), "could not apply the network settings: no reason given"),
        (_mm(network_settings={"success": False, "error_message": "EPERM"}), "settings: EPERM"),
    ],
)
def test_refused_network_settings_fail_the_engine(answer: pb.ManagerMessage, why: str) -> None:
    core = TunnelCore()
    core.claim_start()
    core.engine_started()
    with pytest.raises(FatalError, match=why):
        core.receive_network_settings(answer, INFO, wall=0.0)
    assert not core.up and core.peer.state == pb.Peer.CONNECTING
    core.engine_finished("the manager could not apply the network settings")
    reply = core.start_reply()
    assert not reply.start.success and "could not apply" in reply.start.error_message


def test_start_reply_when_the_engine_stopped_without_error() -> None:
    core = TunnelCore()
    core.claim_start()
    core.engine_started()
    core.engine_finished("")
    assert core.start_reply().start.error_message == "the tunnel stopped"


def test_timer_pushes_moving_counters_only_while_connected() -> None:
    core = TunnelCore(peer_update_interval=10.0)
    assert core.get_timer() is None
    core.start_timer(100.0)
    assert core.get_timer() == 110.0
    core.handle_timer(105.0, (1, 1))  # early: nothing, timer unchanged
    assert core.get_timer() == 110.0
    core.handle_timer(110.0, (1, 1))  # not connected
    assert core.get_timer() == 120.0 and _states(core) == []
    core.claim_start()
    core.engine_started()
    core.receive_network_settings(_mm(network_settings={"success": True}), INFO, wall=0.0)
    core.updates_to_send(None)
    core.handle_timer(120.0, None)  # no device yet
    core.handle_timer(130.0, (5, 7))
    pushed = core.updates_to_send((5, 7))
    assert [(m.peer_update.upserted_peers[0].tx_bytes, m.peer_update.upserted_peers[0].rx_bytes) for m in pushed] == [(5, 7)]
    core.handle_timer(140.0, (5, 7))  # unchanged
    assert _states(core) == []
    core.handle_timer(150.0, (6, 7))
    assert _states(core) == [pb.Peer.CONNECTED]


EVENTS = st.lists(
    st.sampled_from(["claim", "prepare_fail", "started", "up", "refused", "finished_ok", "finished_err", "stop"]),
    max_size=25,
)


@given(EVENTS)
def test_lifecycle_invariants(events: list[str]) -> None:
    """Whatever order the service reports things in, the answers stay consistent."""
    core = TunnelCore()
    pushes = 0
    for ev in events:
        before = core.peer.state
        if ev == "claim":
            was = core.started
            assert (core.claim_start() is None) == (not was)
        elif ev == "prepare_fail":
            assert not core.start_failed("bad").start.success
            pushes += 1
        elif ev == "started":
            core.engine_started()
            pushes += 1
        elif ev == "up":
            core.receive_network_settings(_mm(network_settings={"success": True}), INFO, 0.0)
            pushes += 1
        elif ev == "refused":
            with pytest.raises(FatalError):
                core.receive_network_settings(_mm(network_settings={}), INFO, 0.0)
        elif ev.startswith("finished"):
            core.engine_finished("boom" if ev == "finished_err" else "")
            pushes += 1
        else:
            expect = core.started and not core.engine_done
            assert core.stop_engine() == expect
            pushes += expect
        if ev == "refused":
            assert core.peer.state == before
        assert core.start_reply().start.success == core.up
        assert core.peer.state != pb.Peer.FAILED or core.peer.error_message
    assert len(core.updates_to_send(None)) == pushes


# ---------------------------------------------------------------- manager role


def _item(msg_id: int = 0, response: bool = False, **fields: Any) -> Request | Notice:
    msg = _tm(rpc={"msg_id": msg_id}, **fields)
    if msg_id:
        return Request(msg_id, msg.WhichOneof("msg"), msg)
    return Notice(msg.WhichOneof("msg"), msg)


def test_manager_relays_logs_with_the_tunnel_logger_name() -> None:
    core = ManagerCore()
    entry = {"level": pb.Log.ERROR, "message": "m", "logger_names": ["trivpn", "engine"],
             "fields": [{"name": "time", "value": "1"}, {"name": "error", "value": "E"}]}
    action = core.receive(_item(log=entry))
    assert action == RelayLog(logging.ERROR, "m", " [error=E]", "engine")
    other = core.receive(_item(log={"level": pb.Log.FATAL, "logger_names": ["app", "x"]}))
    assert isinstance(other, RelayLog) and (other.level, other.logger) == (logging.CRITICAL, "app.x")


def test_relayed_log_text_cannot_forge_lines_or_drive_the_terminal() -> None:
    """The tunnel is unprivileged: its text went as-is into the manager's terminal and log."""
    core = ManagerCore()
    entry = {"message": "ok\n12:00:00 managed tunnel up\x1b[2J", "logger_names": ["trivpn", "a\rb"],
             "fields": [{"name": "error", "value": "x\x07"}]}
    action = core.receive(_item(log=entry))
    assert action == RelayLog(
        logging.DEBUG, "ok\\n12:00:00 managed tunnel up\\x1b[2J", " [error=x\\x07]", "a\\rb"
    )
    plain = core.receive(_item(log={"message": "tunnel up: 10.8.0.2/24 — AES-256-GCM"}))
    assert isinstance(plain, RelayLog) and plain.message == "tunnel up: 10.8.0.2/24 — AES-256-GCM"


def test_manager_keeps_the_latest_peer_and_answers_requests() -> None:
    core = ManagerCore()
    pushed = core.receive(_item(peer_update={"upserted_peers": [{"name": "a"}, {"name": "b"}]}))
    assert isinstance(pushed, NotePeerUpdate) and pushed.request is None
    assert core.peer is not None and core.peer.name == "b"
    asked = core.receive(_item(4, peer_update={}))
    assert isinstance(asked, NotePeerUpdate) and asked.request is not None and asked.request.msg_id == 4
    settings = core.receive(_item(5, network_settings={"mtu": 1400}))
    assert isinstance(settings, ApplySettings) and settings.settings.mtu == 1400
    assert isinstance(core.receive(_item(6, start={})), EmptyReply)
    assert core.receive(_item(network_settings={})) is None  # one-way settings: ignored


def test_manager_settings_answers() -> None:
    assert ManagerCore.settings_answer(None).network_settings.success
    refused = ManagerCore.settings_answer(ConfigError("bad mask")).network_settings
    assert not refused.success and refused.error_message == "bad mask"
    failed = ManagerCore.settings_answer(PermissionError(1, "Operation not permitted")).network_settings
    assert not failed.success and failed.error_message == "Operation not permitted"


def test_manager_start_checks() -> None:
    msg = ManagerCore.start_message(tun_fd=7, profile_text="t", profile_path="/p", username="u",
                                    password="pw", key_derivation="ekm", tunnel_name="tvpn0")
    assert msg.start.tunnel_file_descriptor == 7 and msg.start.tunnel_name == "tvpn0"
    ok = _tm(start={"success": True})
    ManagerCore.check_start(ok, timed_out=False, start_timeout=90.0)
    with pytest.raises(FatalError, match="within 90 s"):
        ManagerCore.check_start(None, timed_out=True, start_timeout=90.0)
    with pytest.raises(FatalError, match="^the tunnel failed to start$"):
        ManagerCore.check_start(_tm(start={}), timed_out=False, start_timeout=1.0)
    with pytest.raises(FatalError, match="^no route$"):
        ManagerCore.check_start(_tm(start={"error_message": "no route"}), timed_out=False, start_timeout=1.0)
    update = ManagerCore.check_peer_update(_tm(peer_update={"upserted_peers": [{"name": "x"}]}))
    assert update.upserted_peers[0].name == "x"
    with pytest.raises(RemoteProtocolError):
        ManagerCore.check_peer_update(_tm(stop={}))
