"""The reverse tunnel's scheduler, session budget and heartbeat, each alone."""

from __future__ import annotations

from trivpn.reverse.config import SessionConfig
from trivpn.reverse.events import Event, Pong
from trivpn.reverse.frames import Flag, FrameDecoder, FrameType, encode, header
from trivpn.reverse.heartbeat import Heartbeat
from trivpn.reverse.scheduler import BufferPool, Scheduler, SessionBudget


class FakeStreams:
    """A `DataSource` with an unlimited credit: `backlog[sid]` bytes to send per stream."""

    def __init__(self, backlog: dict[int, int]) -> None:
        self.backlog = backlog
        self.pulls: list[tuple[int, int]] = []

    def pull(self, sid: int, limit: int, out: list[bytes], now: float) -> tuple[int, bool]:
        n = min(self.backlog.get(sid, 0), limit)
        self.pulls.append((sid, n))
        if not n:
            return 0, False
        self.backlog[sid] -= n
        out.append(header(FrameType.DATA, 0, sid, n))
        out.append(bytes(n))
        return n, self.backlog[sid] > 0


def data_sids(out: list[bytes]) -> list[int]:
    return [f.stream_id for f in FrameDecoder(1 << 24).feed(b"".join(out))]


def test_control_leaves_before_data_in_order() -> None:
    s = Scheduler(SessionConfig())
    s.max_frame = 1 << 20
    s.ready(1)
    s.control(FrameType.WINDOW, 0, 7, b"\x00\x00\x00\x01")
    s.control(FrameType.PING, payload=bytes(8))
    frames = FrameDecoder(1 << 24).feed(b"".join(s.data_to_send(FakeStreams({1: 10}), 0.0)))
    assert [f.type for f in frames] == [FrameType.WINDOW, FrameType.PING, FrameType.DATA]


def test_round_robin_within_one_burst() -> None:
    s = Scheduler(SessionConfig(chunk=1000, burst=6000))
    s.max_frame = 1 << 20
    src = FakeStreams({1: 10_000, 2: 10_000, 3: 500})
    for sid in (1, 2, 3):
        s.ready(sid)
    out = s.data_to_send(src, 0.0)
    assert data_sids(out) == [1, 2, 3, 1, 2, 1, 2]  # 3 ran dry; 6000 bytes spent in 7 frames
    assert sum(n for _, n in src.pulls) == 6000
    assert s.wants_to_send  # 1 and 2 still have bytes: they stay in the ring


def test_chunk_never_exceeds_the_peers_max_frame() -> None:
    s = Scheduler(SessionConfig(chunk=64 * 1024))
    s.max_frame = 300
    src = FakeStreams({1: 1000})
    s.ready(1)
    s.data_to_send(src, 0.0)
    assert max(n for _, n in src.pulls) == 300


def test_ready_twice_is_one_slot_and_clear_drops_data() -> None:
    s = Scheduler(SessionConfig())
    s.max_frame = 1 << 20
    s.ready(4)
    s.ready(4)
    src = FakeStreams({})
    s.data_to_send(src, 0.0)
    assert src.pulls == [(4, 0)]
    s.ready(5)
    s.control(FrameType.GOAWAY, payload=b"\x00\x00\x00\x00")
    s.clear_data()
    assert s.take_control() == [encode(FrameType.GOAWAY, payload=b"\x00\x00\x00\x00")]
    assert not s.wants_to_send


def test_budget_gates_growth_at_half_the_cap_and_holds_the_hard_cap() -> None:
    b = SessionBudget(SessionConfig(session_buffer=4096))
    assert b.may_grow(2048) and not b.may_grow(2049)  # growth: half the cap
    b.grow(2048)
    assert not b.may_grow(1)
    b.grow(-1024)
    assert b.may_grow(1024) and not b.may_grow(1025)
    b.received(2047)
    assert b.has_room
    b.received(1)
    assert not b.has_room  # half the cap held: windows shrink back instead of growing
    b.received(2048)
    assert b.fits(0) and not b.fits(1)  # the hard cap
    b.released(2049)
    assert b.has_room


def test_pool_gates_growth_and_room_over_all_sessions() -> None:
    pool = BufferPool(8192)
    cfg = SessionConfig(session_buffer=1 << 20)
    one, two = SessionBudget(cfg, pool), SessionBudget(cfg, pool)
    one.grow(4000)
    assert two.may_grow(96) and not two.may_grow(97)  # P/2 over both
    two.received(4096)
    assert not one.has_room and not one.fits(4097) and one.fits(4096)


def test_heartbeat_pings_pongs_and_expires() -> None:
    cfg = SessionConfig(missed_heartbeats=3)
    sched = Scheduler(cfg)
    events: list[Event] = []
    hb = Heartbeat(cfg, 0.0, sched, events)
    assert hb.deadline() == 30.0  # not started: expiry only (with the configured interval)
    hb.start(2.0)
    assert hb.deadline() == 2.0
    assert hb.check(1.9) is None and not sched.take_control()
    assert hb.check(2.0) is None
    (ping,) = FrameDecoder(1 << 20).feed(b"".join(sched.take_control()))
    assert ping.type is FrameType.PING and not ping.flags
    pong = FrameDecoder(1 << 20).feed(encode(FrameType.PING, Flag.ACK, 0, ping.payload))[0]
    hb.on_ping(pong, 2.25)
    assert events == [Pong(0.25)]
    peer_ping = FrameDecoder(1 << 20).feed(encode(FrameType.PING, 0, 0, b"12345678"))[0]
    hb.on_ping(peer_ping, 2.5)
    assert sched.take_control() == [encode(FrameType.PING, Flag.ACK, 0, b"12345678")]
    hb.last_rx = 3.0
    assert hb.check(8.9) is None
    assert hb.check(9.0) == "no heartbeat from the peer for 6 s"


def test_heartbeat_remembers_only_a_few_pings() -> None:
    cfg = SessionConfig(missed_heartbeats=2)
    sched = Scheduler(cfg)
    events: list[Event] = []
    hb = Heartbeat(cfg, 0.0, sched, events)
    hb.start(1.0)
    opaque = []
    for t in range(1, 50):
        hb.last_rx = float(t)  # the peer talks, but never answers a ping
        hb.check(float(t))
        opaque += [f.payload for f in FrameDecoder(1 << 20).feed(b"".join(sched.take_control()))]
    assert len(opaque) == 49
    for payload in opaque:  # late pongs for all of them: only the last few are known
        hb.on_ping(
            FrameDecoder(1 << 20).feed(encode(FrameType.PING, Flag.ACK, 0, payload))[0], 50.0
        )
    assert events == [Pong(50.0 - t) for t in range(49 - cfg.missed_heartbeats, 50)]
