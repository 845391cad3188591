"""Regression tests for issue 15's bounds (hostile peers), each showing its figure."""

from __future__ import annotations

from trivpn.reverse import session as S
from trivpn.reverse.frames import FrameDecoder, FrameType, encode
from trivpn.reverse.session import Session, SessionConfig, State

CID = bytes(range(16))
TOKEN = b"0123456789abcdef-token"


def _pump(
    a: Session, b: Session, now: float = 0.0, rounds: int = 50
) -> tuple[list[object], list[object]]:
    ea: list[object] = []
    eb: list[object] = []
    for _ in range(rounds):
        out_a = b"".join(a.data_to_send(now))
        if out_a:
            b.receive_data(out_a, now)
        out_b = b"".join(b.data_to_send(now))
        if out_b:
            a.receive_data(out_b, now)
        ea += a.events()
        eb += b.events()
        if not out_a and not out_b:
            break
    return ea, eb


def _authenticated_pair() -> tuple[Session, Session]:
    relay = Session("relay", 0.0, SessionConfig(), tokens={"alice": TOKEN})
    client = Session("client", 0.0, SessionConfig(), token=TOKEN, client_id=CID)
    er, _ = _pump(relay, client)
    assert S.BindRequested(0) in er
    return relay, client


def test_frames_coalesced_with_bind_ok_get_the_bound_limit() -> None:
    """BIND_OK + OPEN + 4 KiB DATA in one read: the DATA is judged by max_frame, not 256."""
    relay, client = _authenticated_pair()
    relay.accept_bind(10000, 60)
    sid = relay.open_stream("203.0.113.9:4444", 0.0)
    payload = bytes(4096)
    assert relay.send_data(sid, payload) is not None
    chunk = b"".join(relay.data_to_send(0.0))
    assert len(chunk) > 4096  # BIND_OK, OPEN and the DATA in one read
    client.receive_data(chunk, 0.0)
    ev = client.events()
    assert S.Bound(10000, 60) in ev
    assert b"".join(e.data for e in ev if isinstance(e, S.StreamData)) == payload
    assert client.state is not State.CLOSED and not client.closed


def test_decoder_limit_applies_per_frame() -> None:
    """The decoder hands out one frame at a time, so a limit change hits the next frame."""
    dec = FrameDecoder(256)
    dec.push(encode(FrameType.PING, payload=bytes(8)) + encode(FrameType.DATA, 0, 1, bytes(1000)))
    first = dec.next_frame()
    assert first is not None and first.type is FrameType.PING
    dec.max_frame = 65536
    second = dec.next_frame()
    assert second is not None and len(second.payload) == 1000
    assert dec.next_frame() is None and dec.buffered == 0


def _bound_pair() -> tuple[Session, Session]:
    relay, client = _authenticated_pair()
    relay.accept_bind(10000, 60)
    _pump(relay, client)
    assert relay.state is State.BOUND and client.state is State.BOUND
    return relay, client


def test_ping_flood_from_a_peer_that_never_reads_stays_under_the_control_limit() -> None:
    """40 MiB of PINGs offered by a peer that never reads our pongs: what we queue stays
    at most `control_buffer` (256 KiB here), the rest waits unread (reading_paused)."""
    limit = 256 * 1024
    relay = Session("relay", 0.0, SessionConfig(control_buffer=limit), tokens={"alice": TOKEN})
    client = Session("client", 0.0, SessionConfig(), token=TOKEN, client_id=CID)
    er, _ = _pump(relay, client)
    relay.accept_bind(10000, 60)
    _pump(relay, client)
    assert relay.state is State.BOUND
    ping = encode(FrameType.PING, payload=bytes(8))
    read = ping * (256 * 1024 // len(ping))  # one tunnel read of PINGs
    total = 40 * 1024 * 1024
    offered = accepted = 0
    peak = 0
    for _ in range(total // len(read) + 1):  # bounded: 40 MiB worth of reads at most
        if offered >= total:
            break
        offered += len(read)
        if relay.reading_paused:  # the service would not read: the bytes stay in the kernel
            continue
        relay.receive_data(read, 0.0)
        accepted += len(read)
        peak = max(peak, relay._scheduler.control_bytes)
    assert offered >= total
    assert relay.reading_paused and not relay.closed
    assert peak < limit + len(ping)  # figure: queued pongs never above 256 KiB + one pong
    assert accepted <= 2 * len(read)  # and we stopped reading after about one limit
    # once the pongs are taken (the peer reads again), the waiting frames are handled
    out = b"".join(relay.data_to_send(0.0))
    assert len(out) == peak
    relay.receive_data(b"", 0.0)
    assert relay._scheduler.control_bytes > 0


def test_ping_flood_with_a_slow_reader_keeps_queue_bounded() -> None:
    """8 MiB of PINGs fed while the peer reads our output only now and then."""
    limit = 128 * 1024
    relay, client = _bound_pair()
    relay._scheduler.config.control_buffer = limit
    ping = encode(FrameType.PING, payload=bytes(8))
    read = ping * (64 * 1024 // len(ping))
    fed = peak = 0
    for i in range(10_000):  # bounded
        if fed >= 8 * 1024 * 1024:
            break
        if relay.reading_paused or i % 7 == 0:
            relay.data_to_send(0.0)  # the peer read everything we had queued
            relay.receive_data(b"", 0.0)
        if not relay.reading_paused:
            relay.receive_data(read, 0.0)
            fed += len(read)
        peak = max(peak, relay._scheduler.control_bytes)
    assert fed >= 8 * 1024 * 1024
    assert peak < limit + len(ping)
    assert relay._decoder.buffered <= len(read)


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def test_relay_over_loopback_stops_reading_a_ping_flooder() -> None:
    """A client that authenticates, then sends up to 40 MiB of PINGs and never reads: the
    relay's queued pongs stay at its control limit and its memory does not follow the
    flood (measured: ~1 MiB sent, RSS +1 MiB; without the read pause, 39 MiB went in and
    RSS grew 40 MiB; before this change +143 MB per 40 MiB)."""
    import trio

    from trivpn.reverse.relay import Relay, RelayConfig

    limit = 256 * 1024
    relay = Relay(
        RelayConfig(
            host="127.0.0.1",
            port=0,
            start_port=41000,
            end_port=41010,
            tokens={"alice": TOKEN},
            session=SessionConfig(control_buffer=limit),
        )
    )
    client = Session("client", 0.0, SessionConfig(), token=TOKEN, client_id=CID)
    ping = encode(FrameType.PING, payload=bytes(8))
    chunk = ping * (64 * 1024 // len(ping))
    sent = 0
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(relay.serve)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            for _ in range(100):  # handshake, bounded
                out = b"".join(client.data_to_send(trio.current_time()))
                if out:
                    await stream.send_all(out)
                if client.state is State.BOUND:
                    break
                client.receive_data(await stream.receive_some(65536), trio.current_time())
            assert client.state is State.BOUND
            runner = next(iter(relay.by_owner.values()))
            before = _rss_kib()
            peak = 0
            with trio.move_on_after(2):  # the flood stalls once the relay stops reading
                for _ in range(40 * 1024 * 1024 // len(chunk)):
                    await stream.send_all(chunk)
                    sent += len(chunk)
                    peak = max(peak, runner.session._scheduler.control_bytes)
            grown_mib = (_rss_kib() - before) / 1024
            queued = runner.session._scheduler.control_bytes
            assert queued < limit + len(ping) and peak < limit + len(ping)
            assert sent < 40 * 1024 * 1024  # the relay stopped reading (measured: ~1 MiB)
            assert grown_mib < 32, f"relay grew {grown_mib:.0f} MiB for {sent >> 20} MiB sent"
            await stream.aclose()
            nursery.cancel_scope.cancel()
