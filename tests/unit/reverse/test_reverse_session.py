"""Session/stream state machines of the reverse tunnel, driven without I/O."""

from __future__ import annotations

import pytest

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.reverse import session as S
from trivpn.reverse.frames import ErrorCode, Flag, FrameDecoder, FrameType, encode
from trivpn.reverse.session import Session, SessionConfig, State, StreamClosedError

CID = bytes(range(16))


def pump(
    a: Session, b: Session, now: float = 0.0, rounds: int = 50
) -> tuple[list[S.Event], list[S.Event]]:
    """Move bytes both ways until quiet; return (events of a, events of b)."""
    ea: list[S.Event] = []
    eb: list[S.Event] = []
    for _ in range(rounds):
        moved = False
        out = b"".join(a.data_to_send(now))
        if out:
            moved = True
            b.receive_data(out, now)
        out = b"".join(b.data_to_send(now))
        if out:
            moved = True
            a.receive_data(out, now)
        ea += a.events()
        eb += b.events()
        if not moved:
            break
    return ea, eb


def pair(
    cfg: SessionConfig | None = None, token: bytes = b"s3cret", port: int = 0
) -> tuple[Session, Session]:
    relay = Session(
        "relay", 0.0, cfg or SessionConfig(), tokens={"alice": b"s3cret", "bob": b"other"}
    )
    client = Session(
        "client", 0.0, cfg or SessionConfig(), token=token, client_id=CID, requested_port=port
    )
    return relay, client


def bound_pair(cfg: SessionConfig | None = None) -> tuple[Session, Session]:
    relay, client = pair(cfg)
    er, ec = pump(relay, client)
    assert S.Authenticated("alice", CID) in er
    assert S.BindRequested(0) in er
    relay.accept_bind(10000, 60)
    er, ec = pump(relay, client)
    assert S.Bound(10000, 60) in ec
    assert relay.state is State.BOUND and client.state is State.BOUND
    return relay, client


def test_handshake_reaches_bound_and_forwarding() -> None:
    relay, client = bound_pair()
    sid = relay.open_stream("203.0.113.9:4444", 0.0)
    assert relay.state is State.FORWARDING
    er, ec = pump(relay, client)
    assert S.StreamOpened(sid, "203.0.113.9:4444") in ec
    assert client.state is State.FORWARDING
    client.accept_stream(sid)
    er, ec = pump(relay, client)
    assert S.StreamAccepted(sid) in er


def test_wrong_token_gets_auth_error_and_both_close() -> None:
    relay, client = pair(token=b"wrong")
    er, ec = pump(relay, client)
    assert any(isinstance(e, S.AuthFailed) for e in er)
    fails = [e for e in ec if isinstance(e, S.AuthFailed)]
    assert fails and fails[0].reason == "authentication failed: the relay rejected the token"
    assert relay.closed and client.closed


def test_token_never_on_the_wire() -> None:
    relay, client = pair()
    wire = b""
    for _ in range(5):
        out = b"".join(client.data_to_send(0.0))
        wire += out
        relay.receive_data(out, 0.0)
        client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)
    assert b"s3cret" not in wire


def test_relay_that_cannot_prove_token_is_refused() -> None:
    relay = Session("relay", 0.0, tokens={"x": b"relay-has-this"})
    client = Session("client", 0.0, token=b"relay-has-this", client_id=CID)
    relay.receive_data(b"".join(client.data_to_send(0.0)), 0.0)
    client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)
    relay.receive_data(b"".join(client.data_to_send(0.0)), 0.0)
    out = b"".join(relay.data_to_send(0.0))
    # forge the AUTH_OK proof
    forged = out[:-1] + bytes([out[-1] ^ 1])
    with pytest.raises(RemoteProtocolError, match="prove"):
        client.receive_data(forged, 0.0)
    assert client.closed


@pytest.mark.parametrize(
    "frame",
    [
        encode(FrameType.BIND, payload=b"\x00\x00"),  # bind before hello
        encode(FrameType.AUTH, payload=bytes(96)),  # auth before hello
        encode(FrameType.DATA, 0, 1, b"x"),  # data before bound
        encode(FrameType.PING, payload=bytes(8)),
    ],
)
def test_frame_illegal_in_state_closes_relay_session(frame: bytes) -> None:
    relay = Session("relay", 0.0, tokens={"a": b"t"})
    with pytest.raises(RemoteProtocolError, match="not allowed in state INIT"):
        relay.receive_data(frame, 0.0)
    assert relay.closed
    goaway = FrameDecoder(1000).feed(b"".join(relay.data_to_send(0.0)))
    assert goaway[-1].type is FrameType.GOAWAY
    assert int.from_bytes(goaway[-1].payload[:4], "big") == ErrorCode.PROTOCOL


def test_pre_auth_frames_are_tiny() -> None:
    relay = Session("relay", 0.0, tokens={"a": b"t"})
    hdr = bytes([1, FrameType.GOAWAY, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0])  # 256 bytes > 204 limit
    with pytest.raises(RemoteProtocolError):
        relay.receive_data(hdr, 0.0)
    relay2 = Session("relay", 0.0, tokens={"a": b"t"})
    big = bytes([1, FrameType.DATA, 0, 0, 0, 0, 0, 1, 0x01, 0, 0, 0])  # 16 MiB claimed
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 256"):
        relay2.receive_data(big, 0.0)


def test_handshake_deadline() -> None:
    relay = Session("relay", 0.0, SessionConfig(handshake_timeout=5.0), tokens={"a": b"t"})
    assert relay.get_timer() == 5.0
    relay.handle_timer(4.9)
    assert not relay.closed
    relay.handle_timer(5.0)
    assert relay.closed and "handshake" in (relay.close_reason or "")


def test_data_flow_fin_and_half_close() -> None:
    relay, client = bound_pair()
    sid = relay.open_stream("p", 0.0)
    relay.send_data(sid, b"request")
    relay.send_fin(sid, 0.0)
    er, ec = pump(relay, client)
    assert S.StreamData(sid, b"request") in ec
    assert S.StreamEnded(sid) in ec
    # the client can still answer after the relay's FIN (half-close)
    client.accept_stream(sid)
    client.send_data(sid, b"reply-1")
    client.send_data(sid, b"reply-2")
    client.send_fin(sid, 0.0)
    er, ec = pump(relay, client)
    data = b"".join(e.data for e in er if isinstance(e, S.StreamData))
    assert data == b"reply-1reply-2"
    assert S.StreamEnded(sid) in er and S.StreamClosed(sid) in er
    assert S.StreamClosed(sid) in ec
    assert relay.stream_count == 0 and client.stream_count == 0
    with pytest.raises(StreamClosedError):
        relay.send_data(sid, b"late")


def test_credit_limits_sender_and_consumption_returns_it() -> None:
    cfg = SessionConfig(window=4096, send_buffer=1 << 20, chunk=1024)
    relay, client = bound_pair(cfg)
    sid = relay.open_stream("p", 0.0)
    relay.send_data(sid, b"a" * 10000)
    er, ec = pump(relay, client)
    got = sum(len(e.data) for e in ec if isinstance(e, S.StreamData))
    assert got == 4096  # exactly one window, nothing more without consumption
    assert relay.pending_bytes(sid) == 10000 - 4096
    client.consumed(sid, 4096)
    er, ec = pump(relay, client)
    got2 = sum(len(e.data) for e in ec if isinstance(e, S.StreamData))
    assert got2 == 4096


def test_stalled_stream_does_not_block_others() -> None:
    cfg = SessionConfig(window=4096, chunk=1024)
    relay, client = bound_pair(cfg)
    stalled = relay.open_stream("stalled", 0.0)
    live = relay.open_stream("live", 0.0)
    relay.send_data(stalled, b"s" * 50000)
    total = 0
    for _ in range(20):
        relay.send_data(live, b"l" * 4096)
        er, ec = pump(relay, client)
        for e in ec:
            if isinstance(e, S.StreamData) and e.stream_id == live:
                total += len(e.data)
                client.consumed(live, len(e.data))
        pump(relay, client)
    assert total == 20 * 4096


def test_data_beyond_window_resets_only_that_stream() -> None:
    cfg = SessionConfig(window=1024)
    relay, client = bound_pair(cfg)
    a = relay.open_stream("a", 0.0)
    b = relay.open_stream("b", 0.0)
    pump(relay, client)
    # the relay misbehaves: a raw DATA frame larger than the client's window
    client.receive_data(encode(FrameType.DATA, 0, a, b"x" * 2000), 0.0)
    ev = client.events()
    assert S.StreamReset(a, ErrorCode.FLOW_CONTROL, by_peer=False) in ev
    assert not client.closed
    client.receive_data(encode(FrameType.DATA, 0, b, b"fine"), 0.0)
    assert S.StreamData(b, b"fine") in client.events()


def test_unknown_stream_frames_are_ignored_not_fatal() -> None:
    relay, client = bound_pair()
    relay.receive_data(encode(FrameType.DATA, 0, 77, b"late"), 0.0)
    relay.receive_data(encode(FrameType.WINDOW, 0, 77, b"\x00\x00\x00\x01"), 0.0)
    relay.receive_data(encode(FrameType.RST, 0, 77, b"\x00\x00\x00\x00"), 0.0)
    assert not relay.closed
    assert relay.ignored == 3


def test_rst_from_peer() -> None:
    relay, client = bound_pair()
    sid = relay.open_stream("p", 0.0)
    pump(relay, client)
    client.reset_stream(sid, ErrorCode.REFUSED)
    er, ec = pump(relay, client)
    assert S.StreamReset(sid, ErrorCode.REFUSED, by_peer=True) in er
    assert relay.stream_count == 0


def test_client_may_not_open_streams() -> None:
    relay, client = bound_pair()
    with pytest.raises(LocalProtocolError):
        client.open_stream("x", 0.0)
    with pytest.raises(RemoteProtocolError, match="may not open"):
        relay.receive_data(encode(FrameType.OPEN, 0, 5, b""), 0.0)


def test_heartbeats_and_expiry_after_three_missed() -> None:
    cfg = SessionConfig(heartbeat=10.0)
    relay, client = bound_pair(cfg)
    assert relay.get_timer() == 10.0
    relay.handle_timer(10.0)
    out = FrameDecoder(1 << 20).feed(b"".join(relay.data_to_send(10.0)))
    assert out[0].type is FrameType.PING and not out[0].flags
    client.receive_data(encode(FrameType.PING, 0, 0, out[0].payload), 10.0)
    pong = b"".join(client.data_to_send(10.0))
    relay.receive_data(pong, 10.5)
    assert any(isinstance(e, S.Pong) for e in relay.events())
    # now silence: the relay expires 3 heartbeats after the last byte heard (10.5)
    relay.handle_timer(20.0)
    relay.handle_timer(30.0)
    assert not relay.closed
    relay.handle_timer(40.5)
    assert relay.closed and "no heartbeat" in (relay.close_reason or "")


def test_control_frames_overtake_bulk_data() -> None:
    cfg = SessionConfig(window=1 << 24, burst=65536, chunk=16384, send_buffer=1 << 24)
    relay, client = bound_pair(cfg)
    sid = relay.open_stream("p", 0.0)
    pump(relay, client)
    relay.send_data(sid, b"z" * (1 << 20))
    first = b"".join(relay.data_to_send(0.0))
    assert len(first) < 70000  # one burst, not the whole megabyte
    relay.handle_timer(10.0)  # a ping is due
    second = FrameDecoder(1 << 20).feed(b"".join(relay.data_to_send(10.0)))
    assert second[0].type is FrameType.PING


def test_writable_event_after_drain() -> None:
    cfg = SessionConfig(send_buffer=8192, chunk=4096, burst=1 << 20)
    relay, client = bound_pair(cfg)
    sid = relay.open_stream("p", 0.0)
    assert relay.send_data(sid, b"q" * 9000) is False
    relay.data_to_send(0.0)
    assert S.StreamWritable(sid) in relay.events()


def test_goaway_from_peer_resets_streams() -> None:
    relay, client = bound_pair()
    sid = relay.open_stream("p", 0.0)
    pump(relay, client)
    client.close("bye")
    er, ec = pump(relay, client)
    assert any(isinstance(e, S.SessionClosed) and e.by_peer and "bye" in e.reason for e in er)
    assert S.StreamReset(sid, ErrorCode.CANCEL, by_peer=True) in er


def test_linger_resets_half_closed_stream() -> None:
    cfg = SessionConfig(linger=5.0, heartbeat=100.0)
    relay, client = bound_pair(cfg)
    sid = relay.open_stream("p", 0.0)
    relay.send_fin(sid, 1.0)
    relay.data_to_send(1.0)
    assert relay.get_timer() == 6.0
    relay.handle_timer(6.0)
    assert S.StreamReset(sid, ErrorCode.TIMEOUT, by_peer=False) in relay.events()
    assert relay.stream_count == 0


def test_session_buffer_at_half_still_returns_base_window_credit() -> None:
    """Before, credit waited while half the cap was held; a reader that consumes now gets
    its (start) window back at once whatever the other streams hold."""
    cfg = SessionConfig(window=4096, session_buffer=16384, chunk=4096)
    relay, client = bound_pair(cfg)
    a = relay.open_stream("a", 0.0)
    b = relay.open_stream("b", 0.0)
    c = relay.open_stream("c", 0.0)
    for sid in (a, b, c):
        relay.send_data(sid, b"x" * 4096)
    pump(relay, client)
    assert client.total_buffered == 12288
    client.consumed(a, 4096)  # total now 8192, half the cap: credit still goes back
    frames = FrameDecoder(1 << 20).feed(b"".join(client.data_to_send(0.0)))
    assert [(f.stream_id, f.payload) for f in frames if f.type is FrameType.WINDOW] == [
        (a, (4096).to_bytes(4, "big"))
    ]


def test_flags_checked() -> None:
    relay, client = bound_pair()
    with pytest.raises(LocalProtocolError):
        encode(FrameType.WINDOW, Flag.FIN, 1, b"\x00\x00\x00\x01")
