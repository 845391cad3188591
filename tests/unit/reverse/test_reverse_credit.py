"""Stalled streams must not freeze a reader that keeps up (sans-IO core, `now` passed in).

Before: once half of `--session-buffer` (or of the relay's pool) was held by streams
whose readers take nothing, every credit return of the session was deferred, so 10 public
clients that stop reading froze every other download after its first 64 KiB window for
`--stall-timeout`. Now credit is never deferred, windows grow only within half the cap,
and the hard cap resets the largest holders first. Bound: a session holds at most
min(C, N*W0 + C/2) (C = session buffer, W0 = start window, N = open streams).
"""

from __future__ import annotations

import random

from helpers.reverse_sessions import bound, open_streams, pump

from trivpn.reverse import session as S
from trivpn.reverse.frames import ErrorCode
from trivpn.reverse.scheduler import BufferPool
from trivpn.reverse.session import Session, SessionConfig

KIB = 1024
MIB = 1024 * 1024


def download(relay: Session, client: Session, sid: int, total: int, rounds: int = 400) -> int:
    """The client sends `total` bytes on `sid`, the relay consumes each byte as it comes
    (a public reader that keeps up); returns the bytes the relay received in `rounds`."""
    got = 0
    sent = 0
    for _ in range(rounds):  # bounded
        if sent < total and client.pending_bytes(sid) < 256 * KIB:
            piece = min(256 * KIB, total - sent)
            client.send_data(sid, bytes(piece))
            sent += piece
        quiet = True
        for ev in pump(client, relay, rounds=1):
            if isinstance(ev, S.StreamData) and ev.stream_id == sid:
                got += len(ev.data)
                relay.consumed(sid, len(ev.data), 0.0)
                quiet = False
        if got >= total or (quiet and sent >= total and not client.wants_to_send):
            break
    return got


def stall_with_grown_windows(relay: Session, client: Session, sids: list[int]) -> None:
    """Each stream is read for a while (its window grows), then its reader stops while
    the sender keeps sending: it fills whatever window it got."""
    for sid in sids:
        download(relay, client, sid, 4 * MIB, rounds=60)
    for sid in sids:
        client.send_data(sid, bytes(4 * MIB))
    pump(client, relay)
    relay.events()


def test_ten_stalled_readers_do_not_freeze_a_reader_that_keeps_up() -> None:
    """The hunt's figure: 10 stallers, then a download stopped after 65,330 bytes (the
    first 64 KiB window). Now it gets all 8 MiB while the stallers still hold theirs."""
    cfg = SessionConfig()  # 16 MiB session cap, 64 KiB start windows, 2 MiB largest
    relay, client = bound(cfg)
    stallers = open_streams(relay, client, 10)
    stall_with_grown_windows(relay, client, stallers)
    held = relay.total_buffered
    assert held >= cfg.session_buffer // 2  # the stallers hold half the cap: the old freeze
    (reader,) = open_streams(relay, client, 1)
    assert download(relay, client, reader, 8 * MIB) == 8 * MIB  # before: 65,536
    assert held <= 10 * 64 * KIB + cfg.session_buffer // 2  # N*W0 + C/2: 8.6 MiB
    assert relay.stream_count == 11  # nobody was reset: 11 <= C/(2*W0) = 128
    assert relay.total_buffered <= 11 * 64 * KIB + cfg.session_buffer // 2


def test_a_grown_window_shrinks_back_under_pressure_and_keeps_its_start_window() -> None:
    """A reader grew a 2 MiB window; then another tunnel's stallers hold half the relay
    pool. The reader keeps downloading; its window drains back to 64 KiB, not below."""
    pool = BufferPool(4 * MIB)
    cfg = SessionConfig()
    relay, client = bound(cfg, pool)
    (reader,) = open_streams(relay, client, 1)
    assert download(relay, client, reader, 8 * MIB) == 8 * MIB
    assert relay._streams.table[reader].window == 2 * MIB  # read: it grew to the largest
    other, other_client = bound(cfg, pool)
    for sid in open_streams(other, other_client, 40):
        other_client.send_data(sid, bytes(64 * KIB))
    pump(other_client, other)
    assert pool.buffered == 40 * 64 * KIB >= pool.limit // 2  # pressure
    assert download(relay, client, reader, 4 * MIB) == 4 * MIB  # still flowing
    assert relay._streams.table[reader].window == 64 * KIB  # shrank to the start window
    assert pool.grown == 0 and pool.buffered <= pool.limit


def test_many_stalled_streams_cannot_get_a_reader_reset() -> None:
    """300 streams that fill their start windows and never read, on a 1 MiB cap (C/W0 =
    16 fit): before, a reader opened after them got RST BUSY on its first frame; now the
    largest holders are reset for it, and held bytes never exceed C."""
    cfg = SessionConfig(session_buffer=MIB)
    relay, client = bound(cfg)
    stallers = open_streams(relay, client, 300)
    for sid in stallers:
        client.send_data(sid, bytes(64 * KIB))
    pump(client, relay)
    relay.events()
    assert MIB - 64 * KIB <= relay.total_buffered <= MIB
    (reader,) = open_streams(relay, client, 1)
    assert download(relay, client, reader, 4 * MIB) == 4 * MIB
    assert reader in relay._streams.table
    assert relay.total_buffered <= cfg.session_buffer
    assert len(relay._streams.table) <= 1 + cfg.session_buffer // (64 * KIB)


def test_relay_pool_stalled_sessions_do_not_freeze_another_sessions_reader() -> None:
    """The same across sessions: stallers on two tunnels hold half the relay pool; a
    reader on a third tunnel still downloads, and the pool never holds more than P."""
    pool = BufferPool(16 * MIB)
    cfg = SessionConfig()
    stalled = [bound(cfg, pool) for _ in range(2)]
    for relay, client in stalled:
        stall_with_grown_windows(relay, client, open_streams(relay, client, 4))
    assert pool.buffered >= pool.limit // 2  # before: every credit return was deferred
    relay, client = bound(cfg, pool)
    (reader,) = open_streams(relay, client, 1)
    assert download(relay, client, reader, 8 * MIB) == 8 * MIB
    assert pool.grown <= pool.limit // 2
    assert pool.buffered <= 9 * 64 * KIB + pool.limit // 2  # N*W0 + P/2, nobody reset
    assert sum(r.stream_count for r, _ in stalled) == 8


def test_stalled_readers_are_reset_busy_largest_first_never_the_arriving_small_one() -> None:
    cfg = SessionConfig(session_buffer=256 * KIB)
    relay, client = bound(cfg)
    sids = open_streams(relay, client, 5)
    for sid in sids[:4]:
        client.send_data(sid, bytes(64 * KIB))
    pump(client, relay)
    assert relay.total_buffered == 256 * KIB  # full
    client.send_data(sids[4], bytes(1000))
    events = pump(client, relay)
    busy = [e.stream_id for e in events if isinstance(e, S.StreamReset)]
    assert busy == [sids[0]]  # one 64 KiB holder made room (equal holders: the oldest)
    assert [e.code for e in events if isinstance(e, S.StreamReset)] == [ErrorCode.BUSY]
    assert relay.total_buffered == 3 * 64 * KIB + 1000


def test_random_mix_keeps_the_bound_and_the_reader_flowing() -> None:
    """400 seeded steps of streams opening, sending, stalling, reading and closing, on a
    2 MiB cap: after every step the session holds <= min(C, N*W0 + C/2), the growth stays
    <= C/2, and a reader that consumes everything is never starved or reset."""
    rnd = random.Random(15)
    cfg = SessionConfig(session_buffer=2 * MIB, window=512 * KIB, initial_window=32 * KIB)
    relay, client = bound(cfg)
    (reader,) = open_streams(relay, client, 1)
    others: list[int] = []
    reader_got = 0
    for step in range(400):  # bounded
        roll = rnd.random()
        if roll < 0.15 and len(others) < 100:
            others += open_streams(relay, client, 1)
        elif roll < 0.6 and others:
            sid = rnd.choice(others)
            if sid in relay._streams.table and client.pending_bytes(sid) < 256 * KIB:
                client.send_data(sid, bytes(rnd.randrange(1, 128 * KIB)))
        elif roll < 0.8 and others:
            sid = rnd.choice(others)  # a slow reader takes some of what it holds
            st = relay._streams.table.get(sid)
            if st is not None and st.buffered:
                relay.consumed(sid, rnd.randrange(1, st.buffered + 1), 0.0)
        elif others:
            sid = others.pop(rnd.randrange(len(others)))
            relay.reset_stream(sid)
        if client.pending_bytes(reader) < 64 * KIB:
            client.send_data(reader, bytes(64 * KIB))
        for ev in pump(client, relay, rounds=3):
            if isinstance(ev, S.StreamData) and ev.stream_id == reader:
                reader_got += len(ev.data)
                relay.consumed(reader, len(ev.data), 0.0)
            assert not (isinstance(ev, S.StreamReset) and ev.stream_id == reader), step
        table = relay._streams.table
        others = [s for s in others if s in table]
        n = len(table)
        held = relay.total_buffered
        assert held <= min(cfg.session_buffer, n * cfg.start_window + cfg.session_buffer // 2)
        assert relay._budget.grown == sum(st.window - cfg.start_window for st in table.values())
        assert relay._budget.grown <= cfg.session_buffer // 2
    assert reader in relay._streams.table
    assert reader_got >= 400 * 32 * KIB  # at least a start window's worth per step
