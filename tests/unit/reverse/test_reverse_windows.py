"""Issue 15, in the sans-IO core (time is only the `now` we pass): windows start small
and grow while read, the session and relay caps hold, stalled readers and peers that
grant no credit are reset, a FIN behind unwindowed bytes starts the linger."""

from __future__ import annotations

from helpers.reverse_sessions import bound, open_streams, pump

from trivpn.reverse import session as S
from trivpn.reverse.frames import ErrorCode, FrameDecoder, FrameType
from trivpn.reverse.scheduler import BufferPool
from trivpn.reverse.session import SessionConfig


def test_window_starts_small_and_grows_while_the_reader_keeps_up() -> None:
    cfg = SessionConfig()
    relay, client = bound(cfg)
    assert relay.peer_window == client.peer_window == 64 * 1024  # not 2 MiB any more
    (sid,) = open_streams(relay, client, 1)
    sent = 0
    for _ in range(64):  # bounded: 64 rounds of a client that sends, a relay that reads
        if client.pending_bytes(sid) < 256 * 1024:
            client.send_data(sid, bytes(256 * 1024))
            sent += 256 * 1024
        for ev in pump(client, relay):
            if isinstance(ev, S.StreamData):
                relay.consumed(sid, len(ev.data), 0.0)
    assert relay._streams.table[sid].window == cfg.window  # grew to 2 MiB: it was read
    assert sent >= 8 * 1024 * 1024


def test_stalled_streams_keep_small_windows_and_the_session_cap_holds() -> None:
    """40 streams whose reader takes nothing, 1 MiB offered on each: before, each could
    make us hold its 2 MiB window (80 MiB); now at most the 1 MiB cap, the rest RST BUSY."""
    cfg = SessionConfig(session_buffer=1024 * 1024)
    relay, client = bound(cfg)
    sids = open_streams(relay, client, 40)
    for sid in sids:
        client.send_data(sid, bytes(1024 * 1024))
    events = pump(client, relay)
    busy = [e for e in events if isinstance(e, S.StreamReset) and e.code == ErrorCode.BUSY]
    assert relay.total_buffered <= cfg.session_buffer
    assert relay.total_buffered >= cfg.session_buffer - 64 * 1024  # it was filled
    assert len(busy) == 40 - cfg.session_buffer // (64 * 1024)  # figure: 24 of 40 reset
    assert all(relay._streams.table[s].window == 64 * 1024 for s in relay._streams.table)


def test_relay_pool_caps_all_sessions_together() -> None:
    pool = BufferPool(512 * 1024)
    cfg = SessionConfig(session_buffer=1024 * 1024)
    pairs = [bound(cfg, pool) for _ in range(2)]
    for relay, client in pairs:
        for sid in open_streams(relay, client, 8):
            client.send_data(sid, bytes(64 * 1024))
        pump(client, relay)
    assert pool.buffered <= pool.limit  # 2 x 8 x 64 KiB offered: 1 MiB, held 512 KiB
    assert sum(r.total_buffered for r, _ in pairs) == pool.buffered == pool.limit


def test_stalled_reader_is_reset_after_the_timeout_fin_or_not() -> None:
    cfg = SessionConfig(stall_timeout=10.0, linger=1000.0)
    relay, client = bound(cfg)
    a, b = open_streams(relay, client, 2)
    client.send_data(a, b"x" * 1000)
    client.send_data(b, b"y" * 1000)
    client.send_fin(b, 0.0)
    pump(client, relay, now=0.0)
    assert relay.get_timer() <= 10.0
    relay.handle_timer(9.9)
    assert not [e for e in relay.events() if isinstance(e, S.StreamReset)]
    relay.handle_timer(10.0)
    reset = {e.stream_id for e in relay.events() if isinstance(e, S.StreamReset)}
    assert reset == {a, b} and relay.stream_count == 0


def test_a_reader_that_makes_progress_is_not_reset() -> None:
    cfg = SessionConfig(stall_timeout=10.0)
    relay, client = bound(cfg)
    (sid,) = open_streams(relay, client, 1)
    client.send_data(sid, b"z" * 1000)
    pump(client, relay, now=0.0)
    relay.consumed(sid, 10, 5.0)  # slow, but reading
    relay.handle_timer(10.0)
    assert relay.stream_count == 1  # checked again at 5 + 10
    relay.handle_timer(14.9)
    assert relay.stream_count == 1
    relay.handle_timer(15.0)
    assert [e for e in relay.events() if isinstance(e, S.StreamReset)]
    assert relay.stream_count == 0


def test_peer_that_grants_no_credit_is_reset() -> None:
    """Our bytes wait for credit the peer never grants (its reader, or the peer itself,
    stalled): the stream is reset after the timeout instead of holding them for ever."""
    cfg = SessionConfig(stall_timeout=10.0)
    relay, client = bound(cfg)
    (sid,) = open_streams(relay, client, 1)
    assert relay.send_data(sid, bytes(100_000)) is False  # more than the credit: wait
    relay.data_to_send(1.0)  # 64 KiB leave, the peer never answers
    relay.handle_timer(10.9)
    assert relay.stream_count == 1
    relay.handle_timer(11.0)
    assert S.StreamReset(sid, ErrorCode.TIMEOUT, by_peer=False) in relay.events()


def test_fin_behind_unwindowed_bytes_starts_the_linger() -> None:
    """Before: a FIN queued behind bytes with no credit never left, so the linger never
    started and the stream (and its bytes) stayed for ever."""
    cfg = SessionConfig(linger=5.0, stall_timeout=1000.0)
    relay, client = bound(cfg)
    (sid,) = open_streams(relay, client, 1)
    relay.send_data(sid, bytes(100_000))
    relay.send_fin(sid, 1.0)
    relay.data_to_send(1.0)
    assert relay.get_timer() == 6.0
    relay.handle_timer(6.0)
    assert S.StreamReset(sid, ErrorCode.TIMEOUT, by_peer=False) in relay.events()
    assert relay.stream_count == 0


def test_producer_waits_while_more_is_queued_than_the_credit() -> None:
    relay, client = bound(SessionConfig())
    (sid,) = open_streams(relay, client, 1)
    assert relay.send_data(sid, bytes(64 * 1024)) is True  # fits the credit
    assert relay.send_data(sid, b"!") is False and relay.awaiting_writable(sid)
    out = b"".join(relay.data_to_send(0.0))
    client.receive_data(out, 0.0)
    assert not [e for e in relay.events() if isinstance(e, S.StreamWritable)]
    got = sum(len(e.data) for e in client.events() if isinstance(e, S.StreamData))
    client.consumed(sid, got, 0.0)  # credit comes back
    raw = b"".join(client.data_to_send(0.0))
    assert any(f.type is FrameType.WINDOW for f in FrameDecoder(1 << 20).feed(raw))
    relay.receive_data(raw, 0.0)
    relay.data_to_send(0.0)
    assert S.StreamWritable(sid) in relay.events() and not relay.awaiting_writable(sid)
