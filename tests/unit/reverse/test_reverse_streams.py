"""The reverse tunnel's stream table alone: credit, FIN/RST, linger, the budget.

Two `Streams` (relay and client role), each with its own `Scheduler` and `SessionBudget`,
joined by decoding what one scheduler sends and handing the frames to the other table.
"""

from __future__ import annotations

from typing import Any

import pytest

from trivpn.errors import RemoteProtocolError
from trivpn.reverse.config import SessionConfig
from trivpn.reverse.events import (
    Event,
    Ignored,
    StreamAccepted,
    StreamClosed,
    StreamClosedError,
    StreamData,
    StreamEnded,
    StreamOpened,
    StreamReset,
    StreamWritable,
)
from trivpn.reverse.frames import ErrorCode, Flag, Frame, FrameDecoder, FrameType, encode
from trivpn.reverse.scheduler import Scheduler, SessionBudget
from trivpn.reverse.streams import Streams


class Side:
    def __init__(self, role: str, cfg: SessionConfig) -> None:
        self.sched = Scheduler(cfg)
        self.sched.max_frame = cfg.max_frame
        self.budget = SessionBudget(cfg)
        self.events: list[Event] = []
        self.streams = Streams(role, cfg, self.sched, self.budget, self.events)
        self.streams.peer_window = cfg.window

    def frames(self, now: float = 0.0) -> list[Frame]:
        return FrameDecoder(1 << 24).feed(b"".join(self.sched.data_to_send(self.streams, now)))

    def take_events(self) -> list[Event]:
        ev = self.events.copy()
        self.events.clear()
        return ev


def deliver(frames: list[Frame], dst: Side, now: float = 0.0) -> None:
    for f in frames:
        if f.type is FrameType.OPEN:
            dst.streams.on_open(f)
        elif f.type is FrameType.DATA:
            dst.streams.on_data(f, now)
        elif f.type is FrameType.WINDOW:
            dst.streams.on_window(f)
        else:
            assert f.type is FrameType.RST
            dst.streams.on_rst(f)


def pair(**kw: Any) -> tuple[Side, Side]:
    cfg = SessionConfig(**kw)
    return Side("relay", cfg), Side("client", cfg)


def test_open_accept_and_data_both_ways() -> None:
    relay, client = pair()
    sid = relay.streams.open("198.51.100.7:5000")
    assert relay.streams.send_data(sid, b"hello") is True
    deliver(relay.frames(), client)
    assert client.take_events() == [
        StreamOpened(sid, "198.51.100.7:5000"),
        StreamData(sid, b"hello"),
    ]
    client.streams.accept(sid)
    client.streams.send_data(sid, b"world")
    deliver(client.frames(), relay)
    assert relay.take_events() == [StreamAccepted(sid), StreamData(sid, b"world")]
    assert client.budget.buffered == 5 and relay.budget.buffered == 5


def test_sender_never_exceeds_credit_and_consumption_returns_it() -> None:
    relay, client = pair(window=4096, chunk=1000, send_buffer=1 << 20)
    sid = relay.streams.open("p")
    relay.streams.send_data(sid, b"x" * 10_000)
    frames = relay.frames()
    assert sum(len(f.payload) for f in frames if f.type is FrameType.DATA) == 4096
    assert relay.frames() == []  # no credit left: not ready any more
    deliver(frames, client)
    client.streams.consumed(sid, 2047)  # less than half a window: no WINDOW yet
    assert not [f for f in client.frames() if f.type is FrameType.WINDOW]
    client.streams.consumed(sid, 1)
    (win,) = client.frames()
    assert win.type is FrameType.WINDOW and int.from_bytes(win.payload, "big") == 2048
    deliver([win], relay)
    again = relay.frames()
    assert sum(len(f.payload) for f in again) == 2048


def test_writable_after_send_buffer_drains() -> None:
    relay, client = pair(send_buffer=4096, chunk=1024, window=1 << 20)
    sid = relay.streams.open("p")
    assert relay.streams.send_data(sid, b"q" * 5000) is False
    relay.frames()
    assert StreamWritable(sid) in relay.take_events()


def test_fin_both_ways_forgets_the_stream_and_late_frames_are_ignored() -> None:
    relay, client = pair()
    sid = relay.streams.open("p")
    relay.streams.send_data(sid, b"req")
    relay.streams.send_fin(sid)
    with pytest.raises(StreamClosedError, match="half-closed"):
        relay.streams.send_data(sid, b"more")
    frames = relay.frames()
    assert frames[-1].type is FrameType.DATA and frames[-1].flags & Flag.FIN
    deliver(frames, client)
    assert StreamEnded(sid) in client.take_events()
    client.streams.send_data(sid, b"reply")  # the other direction still flows
    client.streams.send_fin(sid)
    deliver(client.frames(), relay)
    assert StreamClosed(sid) in relay.take_events()
    assert StreamClosed(sid) in client.take_events()
    assert not relay.streams.table and not client.streams.table
    deliver([FrameDecoder(1 << 20).feed(encode(FrameType.DATA, 0, sid, b"late"))[0]], relay)
    assert relay.streams.ignored == 1 and isinstance(relay.take_events()[0], Ignored)


def test_data_beyond_credit_resets_only_that_stream() -> None:
    relay, client = pair(window=1024)
    a = relay.streams.open("a")
    b = relay.streams.open("b")
    deliver(relay.frames(), client)
    hostile = FrameDecoder(1 << 20).feed(encode(FrameType.DATA, 0, a, b"x" * 2000))
    deliver(hostile, client)
    assert StreamReset(a, ErrorCode.FLOW_CONTROL, by_peer=False) in client.take_events()
    (rst,) = client.frames()
    assert rst.type is FrameType.RST and rst.stream_id == a
    assert b in client.streams.table and a not in client.streams.table


def test_rst_from_peer_releases_its_buffered_bytes() -> None:
    relay, client = pair()
    sid = relay.streams.open("p")
    relay.streams.send_data(sid, b"z" * 5000)
    deliver(relay.frames(), client)
    assert client.budget.buffered == 5000
    relay.streams.reset(sid, ErrorCode.REFUSED)
    deliver(relay.frames(), client)
    assert StreamReset(sid, ErrorCode.REFUSED, by_peer=True) in client.take_events()
    assert client.budget.buffered == 0


def test_budget_at_half_cap_still_returns_start_window_credit() -> None:
    relay, client = pair(window=4096, session_buffer=16384, chunk=4096)
    a = relay.streams.open("a")
    b = relay.streams.open("b")
    c = relay.streams.open("c")
    for sid in (a, b, c):
        relay.streams.send_data(sid, b"x" * 4096)
    deliver(relay.frames(), client)
    client.streams.consumed(a, 4096)  # still 8192 buffered: half the cap
    assert [f.stream_id for f in client.frames() if f.type is FrameType.WINDOW] == [a]
    assert client.streams.table[a].window == 4096  # kept, did not grow


def test_half_closed_stream_is_reset_after_linger() -> None:
    relay, _ = pair(linger=5.0)
    sid = relay.streams.open("p")
    relay.streams.send_fin(sid)
    relay.frames(now=1.0)
    assert relay.streams.next_deadline() == 6.0
    relay.streams.expire(5.9)
    assert sid in relay.streams.table
    relay.streams.expire(6.0)
    assert StreamReset(sid, ErrorCode.TIMEOUT, by_peer=False) in relay.take_events()
    assert sid not in relay.streams.table


def test_client_refuses_reused_ids_and_acks_from_the_relay() -> None:
    relay, client = pair()
    sid = relay.streams.open("p")
    deliver(relay.frames(), client)
    again = FrameDecoder(1 << 20).feed(encode(FrameType.OPEN, 0, sid, b"p"))[0]
    with pytest.raises(RemoteProtocolError, match="reused"):
        client.streams.on_open(again)
    ack = FrameDecoder(1 << 20).feed(encode(FrameType.OPEN, Flag.ACK, sid + 1))[0]
    with pytest.raises(RemoteProtocolError, match="OPEN\\|ACK"):
        client.streams.on_open(ack)


def test_relay_refuses_client_opened_streams_and_limits_count() -> None:
    relay, client = pair(max_streams=2)
    with pytest.raises(RemoteProtocolError, match="may not open"):
        relay.streams.on_open(FrameDecoder(1 << 20).feed(encode(FrameType.OPEN, 0, 9, b""))[0])
    relay.streams.open("a")
    relay.streams.open("b")
    with pytest.raises(StreamClosedError, match="too many"):
        relay.streams.open("c")
    with pytest.raises(StreamClosedError, match="not open"):
        relay.streams.accept(1)  # only the client accepts


def test_reset_all_reports_every_stream() -> None:
    relay, _ = pair()
    ids = [relay.streams.open("p") for _ in range(3)]
    relay.streams.reset_all(by_peer=True)
    assert relay.take_events() == [StreamReset(s, ErrorCode.CANCEL, by_peer=True) for s in ids]
    assert not relay.streams.table
