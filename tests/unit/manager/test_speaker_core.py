"""SpeakerCore without I/O: handshake order, frames in any chunking, RPC bookkeeping, Stop last."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from helpers.manager_peer import frame
from hypothesis import given
from hypothesis import strategies as st

from trivpn.errors import LocalProtocolError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.framing import Version
from trivpn.manager.rpc import Notice, Request, Response
from trivpn.manager.speakercore import AutoReply, HandshakeError, Received, RPCClosed, SpeakerCore


def _tm(**fields: Any) -> pb.TunnelMessage:
    """A TunnelMessage from protobuf's dict shorthand (typed loosely, as the stubs cannot)."""
    return pb.TunnelMessage(**fields)


def _mm(**fields: Any) -> pb.ManagerMessage:
    return pb.ManagerMessage(**fields)


def _open(role: str = "manager", peer_header: bytes = b"trivpn tunnel 1.0\n") -> SpeakerCore:
    core = SpeakerCore(role)
    core.start_handshake(100.0)
    assert core.receive_header_data(peer_header)
    core.finish_handshake()
    return core


def _delivered(core: SpeakerCore) -> list[tuple[str | None, int]]:
    """(kind, msg_id) of every Request/Notice the core handed out so far."""
    out: list[tuple[str | None, int]] = []
    for ev in core.events():
        if isinstance(ev, Received):
            out += [(i.kind, i.msg_id if isinstance(i, Request) else 0) for i in ev.batch]
    return out


# ---------------------------------------------------------------- handshake


def test_handshake_negotiates_and_keeps_bytes_behind_the_header() -> None:
    core = SpeakerCore("tunnel", versions=(Version(1, 3), Version(2, 1)))
    assert core.header == b"trivpn tunnel 1.3,2.1\n"
    core.start_handshake(10.0)
    assert core.get_timer() == 15.0
    first = frame(_mm(rpc={"msg_id": 4}, get_peer_update={}))
    assert core.receive_header_data(b"trivpn manager 1.9,2.0\n" + first)
    assert core.finish_handshake() == Version(2, 0) == core.version
    assert core.get_timer() is None  # no deadline once open
    assert _delivered(core) == [("get_peer_update", 4)]


def test_header_fed_byte_by_byte_wants_more_until_the_newline() -> None:
    core = SpeakerCore("manager")
    line = b"trivpn tunnel 1.0\n"
    assert [core.receive_header_data(line[i : i + 1]) for i in range(len(line))] == [False] * (len(line) - 1) + [True]
    assert core.finish_handshake() == Version(1, 0)


def test_timer_before_the_deadline_does_nothing_after_it_times_out() -> None:
    core = SpeakerCore("manager", handshake_timeout=2.5)
    core.start_handshake(0.0)
    core.handle_timer(2.4)
    core.receive_header_data(b"trivpn tun")
    core.handle_timer(2.5)
    with pytest.raises(HandshakeError, match="no header from the tunnel within 2.5 s"):
        core.finish_handshake()


def test_first_failure_wins_over_the_timeout_and_a_bad_line() -> None:
    core = SpeakerCore("manager")
    core.start_handshake(0.0)
    core.write_failed("pipe closed")
    assert core.receive_header_data(b"trivpn manager 1.0\n")  # wrong role, but later
    core.read_failed("gone")
    core.handle_timer(99.0)
    assert core.handshake_failed
    with pytest.raises(HandshakeError, match="^could not send our header: pipe closed$"):
        core.finish_handshake()


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "^the peer hung up during the header exchange$"),
        (b"trivpn manager 1.0\n", "^handshake failed: wrong role"),
        (b"trivpn tunnel 2.0\n", "^handshake failed: our versions 1.0 are not compatible"),
        (b"x" * 256, "^handshake failed: header malformed or too large"),
    ],
)
def test_header_failures(data: bytes, why: str) -> None:
    core = SpeakerCore("manager")
    core.start_handshake(0.0)
    assert core.receive_header_data(data)
    with pytest.raises(HandshakeError, match=why):
        core.finish_handshake()


def test_our_own_bad_setup_fails_at_construction() -> None:
    with pytest.raises(LocalProtocolError):
        SpeakerCore("server")
    with pytest.raises(LocalProtocolError):
        SpeakerCore("tunnel", versions=(Version(2, 0), Version(1, 0)))


# ---------------------------------------------------------------- reading


@st.composite
def tunnel_frames(draw: st.DrawFn) -> list[pb.TunnelMessage]:
    out = []
    for n in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["log", "peer_update", "network_settings"]))
        msg_id = draw(st.sampled_from([0, n + 1])) if kind != "log" else 0
        out.append(_tm(rpc={"msg_id": msg_id}, **{kind: {}}))
    return out


@given(tunnel_frames(), st.lists(st.integers(1, 40), max_size=30))
def test_any_chunking_delivers_the_same_items_in_order(msgs: list[pb.TunnelMessage], cuts: list[int]) -> None:
    data = b"".join(frame(m) for m in msgs)
    core = _open()
    pos, got = 0, []
    for size in [*cuts, len(data)]:
        if data[pos : pos + size]:  # b"" would be end of stream
            core.receive_data(data[pos : pos + size])
        got += _delivered(core)
        pos += size
    assert got == [(m.WhichOneof("msg"), m.rpc.msg_id) for m in msgs]
    assert core.reading and core.closed_reason is None


def test_end_of_stream_inside_a_frame_and_read_failures() -> None:
    core = _open()
    core.receive_data(b"\x00\x00\x00\x05ab")
    core.receive_data(b"")
    assert not core.reading and core.closed_reason == "end of stream inside a frame"
    core.receive_data(frame(_tm(log={})))  # ignored once the read side ended
    assert core.events() == []
    closed = _open()
    closed.read_failed("x", closed=True)
    assert closed.closed_reason == "stream closed"
    broken = _open()
    broken.read_failed("reset by peer")
    assert broken.closed_reason == "read failed: reset by peer"


def test_good_frames_before_a_bad_one_are_delivered_then_it_hangs_up() -> None:
    core = _open()
    core.receive_data(frame(_tm(log={"message": "a"})) + struct.pack(">I", 10) + b"\x00" * 10)
    assert _delivered(core) == [("log", 0)]
    assert not core.reading and "corrupt" in (core.closed_reason or "")


def test_unknown_request_gets_an_auto_reply_and_unknown_notice_is_dropped() -> None:
    core = _open("tunnel", b"trivpn manager 1.0\n")
    newer = _mm(rpc={"msg_id": 5}).SerializeToString() + b"\xfa\x01\x00"
    newer_notice = _mm().SerializeToString() + b"\xfa\x01\x00"
    core.receive_data(struct.pack(">I", len(newer)) + newer + struct.pack(">I", len(newer_notice)) + newer_notice)
    (ev,) = core.events()
    assert isinstance(ev, AutoReply) and ev.msg_id == 5
    reply = pb.TunnelMessage.FromString(ev.frame[4:])
    assert reply.rpc.response_to == 5 and reply.WhichOneof("msg") is None


# ---------------------------------------------------------------- requests


def test_request_response_and_a_late_response_after_forget() -> None:
    core = _open()
    msg_id, data = core.encode_request(_mm(get_peer_update={}))
    assert msg_id == 1 and pb.ManagerMessage.FromString(data[4:]).rpc.msg_id == 1
    core.receive_data(frame(_tm(rpc={"response_to": 1}, peer_update={})))
    (ev,) = core.events()
    assert isinstance(ev, Response) and ev.response_to == 1
    assert core.take_response(1).WhichOneof("msg") == "peer_update"
    core.forget(1)
    second, _ = core.encode_request(_mm(stop={}))
    core.forget(second)  # the caller gave up
    core.receive_data(frame(_tm(rpc={"response_to": second}, stop={})))
    assert core.events() == [] and core.dropped_responses == 1 and core.pending == set()


def test_close_fails_pending_requests_and_later_sends() -> None:
    core = _open()
    a, _ = core.encode_request(_mm(get_peer_update={}))
    b, _ = core.encode_request(_mm(stop={}))
    assert core.close("end of stream") == [a, b]
    assert core.close("again") == [] and core.closed_reason == "end of stream"
    with pytest.raises(RPCClosed, match=r"^the tunnel hung up \(end of stream\)$"):
        core.take_response(a)
    with pytest.raises(RPCClosed, match=r"^the protocol stream is closed \(end of stream\)$"):
        core.encode(_mm(get_peer_update={}))
    with pytest.raises(RPCClosed):
        core.encode_request(_mm(get_peer_update={}))
    assert core.pending == set()


def test_stop_reply_is_the_last_frame() -> None:
    core = _open("tunnel", b"trivpn manager 1.0\n")
    core.encode(_tm(log={"message": "bye"}))
    assert not core.last_frame_written(0)
    core.encode_reply(7, _tm(stop={"success": True}))
    assert core.finished
    assert not core.last_frame_written(1) and core.last_frame_written(0)
    with pytest.raises(RPCClosed, match="Stop was answered"):
        core.encode(_tm(log={"message": "too late"}))
    core.write_shut()
    assert core.closed_reason == "stop answered" and not core.reading


def test_write_failure_after_the_handshake_closes_with_the_first_reason() -> None:
    core = _open()
    core.write_failed("broken pipe")
    core.write_failed("again")
    assert core.closed_reason == "write failed: broken pipe" and not core.reading


def test_sending_the_wrong_envelope_is_our_mistake() -> None:
    core = _open()
    with pytest.raises(LocalProtocolError):
        core.encode(_tm(log={}))
    with pytest.raises(LocalProtocolError):
        core.encode_reply(0, _mm())
    assert isinstance(core.new_message(stop={}), pb.ManagerMessage)


OPS = st.lists(
    st.one_of(
        st.just(("request", 0)),
        st.tuples(st.just("answer"), st.integers(1, 12)),
        st.tuples(st.just("forget"), st.integers(1, 12)),
        st.just(("notice", 0)),
    ),
    max_size=40,
)


@given(OPS, st.booleans())
def test_every_request_ends_answered_or_failed_exactly_once(ops: list[tuple[str, int]], close: bool) -> None:
    core = _open()
    issued: list[int] = []
    answered: set[int] = set()
    forgotten: set[int] = set()
    unknown = 0
    for op, n in ops:
        if op == "request":
            msg_id, _ = core.encode_request(_mm(get_peer_update={}))
            issued.append(msg_id)
        elif op == "forget":
            core.forget(n)
            if n in issued:  # forgetting an id not issued yet has no effect
                forgotten.add(n)
        elif op == "notice":
            core.receive_data(frame(_tm(log={})))
        else:
            core.receive_data(frame(_tm(rpc={"response_to": n}, peer_update={})))
            if n in issued and n not in answered and n not in forgotten:
                answered.add(n)
            else:
                unknown += 1
        for ev in core.events():
            if isinstance(ev, Response):
                assert ev.response_to in answered
                assert core.take_response(ev.response_to) is ev.message
            else:
                assert isinstance(ev, Received) and all(isinstance(i, Notice) for i in ev.batch)
    assert issued == list(range(1, len(issued) + 1))
    assert core.dropped_responses == unknown
    waiting = set(issued) - answered - forgotten
    assert core.pending == waiting
    if close:
        assert set(core.close("end of stream")) == waiting and core.pending == set()
        for msg_id in waiting:
            with pytest.raises(RPCClosed):
                core.take_response(msg_id)


def test_a_flood_of_tiny_frames_comes_out_in_bounded_batches() -> None:
    """The service queues 64 batches; one batch per 64 KiB chunk let 4 MiB of 10-byte
    requests (a peer that never reads the answers) hold about 300 MB of messages."""
    from trivpn.manager.speakercore import MAX_BATCH

    core = _open("manager")
    flood = b"".join(frame(_tm(rpc={"msg_id": i}, peer_update={})) for i in range(1, 1001))
    core.receive_data(flood)
    batches = [ev.batch for ev in core.events() if isinstance(ev, Received)]
    assert all(len(b) <= MAX_BATCH for b in batches) and len(batches) == -(-1000 // MAX_BATCH)
    assert [i.msg_id for b in batches for i in b if isinstance(i, Request)] == list(range(1, 1001))
