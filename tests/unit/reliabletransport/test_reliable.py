"""The reliable-transport core: windows, ACK rules, backoff and OpenVPN's quirks (time injected)."""

from __future__ import annotations

import pytest

from trivpn.errors import ConfigError, LocalProtocolError
from trivpn.reliabletransport.core import OutgoingPacket, ReliableTransport

CONTROL = 4  # P_CONTROL_V1
ACK = 5  # P_ACK_V1


def after_reset() -> ReliableTransport:
    """How the muxer hands over key 0: reset ids 0 used both ways, ACK 0 still owed."""
    return ReliableTransport(next_send_id=1, next_recv_id=1, initial_acks=(0,))


def ids(packets: list[OutgoingPacket]) -> list[int | None]:
    return [p.message_id for p in packets]


# ------------------------------------------------------------- first packet / cookie


def test_first_packet_after_reset_carries_ack_0() -> None:
    r = after_reset()
    assert r.send(CONTROL, b"client hello") == 1
    (pkt,) = r.packets_to_send(0.0)
    assert pkt == OutgoingPacket(CONTROL, (0,), 1, b"client hello")


def test_first_packet_is_a_bare_ack_0_when_nothing_is_queued() -> None:
    r = after_reset()
    assert r.get_timer() is not None  # the owed ACK is work to do
    assert r.packets_to_send(0.0) == [OutgoingPacket(ACK, (0,), None, b"")]
    assert r.packets_to_send(0.1) == []  # owed once, not forever
    assert r.get_timer() is None


def test_retransmitted_first_packet_still_carries_ack_0_via_mru() -> None:
    r = after_reset()
    r.send(CONTROL, b"hello")
    assert r.packets_to_send(0.0)[0].acks == (0,)
    (again,) = r.packets_to_send(2.0)
    assert again.message_id == 1
    assert again.acks == (0,)
    assert r.stats.retransmitted == 1


def test_custom_ack_opcode_is_used_for_bare_acks() -> None:
    r = ReliableTransport(initial_acks=(0,), ack_opcode=99)
    (pkt,) = r.packets_to_send(0.0)
    assert pkt.opcode == 99 and pkt.message_id is None


# ------------------------------------------------------------------------- windows


def test_send_window_of_6_consecutive_ids() -> None:
    r = ReliableTransport()
    sent = [r.send(CONTROL, bytes([i])) for i in range(10)]
    assert sent == list(range(10))
    assert ids(r.packets_to_send(0.0)) == [0, 1, 2, 3, 4, 5]
    assert r.packets_to_send(0.5) == []
    # ACK 1..5: the window is still anchored at the lowest unacked id 0, so 6..9 wait;
    # only id 0 goes out again (fast retransmit: ACKs for higher ids arrived).
    r.receive_packet(ACK, [1, 2, 3, 4, 5], None, b"", 1.0)
    assert ids(r.packets_to_send(1.0)) == [0]
    # ACK 0: the window slides to 6..11, and 6..9 go out.
    r.receive_packet(ACK, [0], None, b"", 1.1)
    assert ids(r.packets_to_send(1.1)) == [6, 7, 8, 9]
    assert not r.all_acked


def test_queue_limit_raises_local_error() -> None:
    r = ReliableTransport(max_queue=3)
    for _ in range(3):
        r.send(CONTROL, b"x")
    assert r.queue_space() == 0
    with pytest.raises(LocalProtocolError):
        r.send(CONTROL, b"x")
    r.packets_to_send(0.0)
    r.receive_packet(ACK, [0], None, b"", 0.1)
    assert r.queue_space() == 1
    assert r.send(CONTROL, b"y") == 3


def test_all_acked_tracks_queue_and_flight() -> None:
    r = ReliableTransport()
    assert r.all_acked
    r.send(CONTROL, b"a")
    assert not r.all_acked
    r.packets_to_send(0.0)
    r.receive_packet(CONTROL, [0], 0, b"peer", 0.5)
    assert r.all_acked
    assert r.messages_received() == [(CONTROL, b"peer")]


# ------------------------------------------------------------------------ receiving


def test_in_order_delivery_from_reordered_packets() -> None:
    r = ReliableTransport()
    for mid in (2, 0, 3, 1):
        r.receive_packet(CONTROL, [], mid, f"m{mid}".encode(), 0.0)
    assert r.messages_received() == [
        (CONTROL, b"m0"),
        (CONTROL, b"m1"),
        (CONTROL, b"m2"),
        (CONTROL, b"m3"),
    ]
    assert r.messages_received() == []
    assert r.stats.received == 4 and r.stats.delivered == 4


def test_partial_delivery_waits_for_the_gap() -> None:
    r = ReliableTransport()
    r.receive_packet(CONTROL, [], 1, b"b", 0.0)
    assert r.messages_received() == []
    r.receive_packet(CONTROL, [], 0, b"a", 0.0)
    assert r.messages_received() == [(CONTROL, b"a"), (CONTROL, b"b")]


def test_duplicate_is_acked_again_but_not_delivered_twice() -> None:
    r = ReliableTransport()
    r.receive_packet(CONTROL, [], 0, b"a", 0.0)
    assert r.messages_received() == [(CONTROL, b"a")]
    assert r.packets_to_send(0.0) == [OutgoingPacket(ACK, (0,), None, b"")]
    # Our ACK was lost; the peer retransmits id 0.
    r.receive_packet(CONTROL, [], 0, b"a", 1.0)
    assert r.messages_received() == []
    assert r.stats.duplicates == 1
    assert r.packets_to_send(1.0) == [OutgoingPacket(ACK, (0,), None, b"")]


def test_duplicate_of_buffered_out_of_order_message_is_acked() -> None:
    r = ReliableTransport()
    r.receive_packet(CONTROL, [], 3, b"d", 0.0)
    r.packets_to_send(0.0)
    r.receive_packet(CONTROL, [], 3, b"d", 0.5)
    assert r.stats.duplicates == 1
    (pkt,) = r.packets_to_send(0.5)
    assert pkt.acks[0] == 3


def test_out_of_window_is_dropped_and_not_acked() -> None:
    r = ReliableTransport(next_recv_id=1)
    r.receive_packet(CONTROL, [], 13, b"too far", 0.0)  # window is [1, 13)
    assert r.stats.out_of_window == 1
    assert r.packets_to_send(0.0) == []
    r.receive_packet(CONTROL, [], 12, b"edge", 0.0)
    assert r.stats.out_of_window == 1
    assert r.packets_to_send(0.0) == [OutgoingPacket(ACK, (12,), None, b"")]


def test_ack_set_full_stores_message_but_skips_ack() -> None:
    r = ReliableTransport()
    for mid in range(9):
        r.receive_packet(CONTROL, [], mid, bytes([mid]), 0.0)
    assert r.stats.ack_set_full == 1
    assert [p for _, p in r.messages_received()] == [bytes([i]) for i in range(9)]
    (bare,) = r.packets_to_send(0.0)
    assert sorted(bare.acks) == list(range(8))  # id 8 not acked: the peer will resend it
    r.receive_packet(CONTROL, [], 8, b"\x08", 1.0)
    assert r.packets_to_send(1.0)[0].acks[0] == 8


def test_ack_opcode_with_message_id_is_counted_and_ignored() -> None:
    r = ReliableTransport()
    r.receive_packet(ACK, [], 0, b"junk", 0.0)
    r.receive_packet(CONTROL, [], None, b"junk", 0.0)
    r.receive_packet(CONTROL, [], -1, b"junk", 0.0)
    r.receive_packet(CONTROL, [], 1 << 32, b"junk", 0.0)
    assert r.stats.malformed == 4
    assert r.messages_received() == []
    assert r.packets_to_send(0.0) == []


def test_acks_for_unsent_ids_are_ignored() -> None:
    r = ReliableTransport()
    r.send(CONTROL, b"a")  # id 0, queued but not yet transmitted
    r.receive_packet(ACK, [0, 7, 1 << 40], None, b"", 0.0)
    assert r.stats.bogus_acks == 3
    assert ids(r.packets_to_send(0.0)) == [0]
    r.receive_packet(ACK, [0], None, b"", 0.1)
    r.receive_packet(ACK, [0], None, b"", 0.2)
    assert r.stats.acks_received == 1 and r.stats.duplicate_acks == 1
    assert r.all_acked


# ---------------------------------------------------------------------- timing


def test_backoff_timeline_doubles_and_caps() -> None:
    r = ReliableTransport(max_timeout=16.0)
    r.send(CONTROL, b"x")
    assert r.get_timer() is not None
    t = 100.0
    assert ids(r.packets_to_send(t)) == [0]
    sends = [t]
    for _ in range(7):
        deadline = r.get_timer()
        assert deadline is not None
        assert r.packets_to_send(deadline - 0.001) == []  # not early
        r.handle_timer(deadline)
        assert ids(r.packets_to_send(deadline)) == [0]
        sends.append(deadline)
    gaps = [b - a for a, b in zip(sends, sends[1:], strict=False)]
    assert gaps == [2.0, 4.0, 8.0, 16.0, 16.0, 16.0, 16.0]
    assert r.stats.sent == 1 and r.stats.retransmitted == 7


def test_default_backoff_caps_at_60() -> None:
    r = ReliableTransport()
    r.send(CONTROL, b"x")
    t = 0.0
    r.packets_to_send(t)
    gaps = []
    for _ in range(8):
        deadline = r.get_timer()
        assert deadline is not None
        gaps.append(deadline - t)
        t = deadline
        r.packets_to_send(t)
    assert gaps == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_timer_is_none_when_idle_and_earliest_when_busy() -> None:
    r = ReliableTransport()
    assert r.get_timer() is None
    r.send(CONTROL, b"a")
    r.packets_to_send(10.0)
    r.send(CONTROL, b"b")
    r.packets_to_send(11.0)
    assert r.get_timer() == 12.0
    r.receive_packet(ACK, [0], None, b"", 11.5)
    assert r.get_timer() == 13.0
    r.receive_packet(ACK, [1], None, b"", 11.6)
    assert r.get_timer() is None


def test_fast_retransmit_after_three_higher_acks() -> None:
    r = ReliableTransport()
    for i in range(5):
        r.send(CONTROL, bytes([i]))
    r.packets_to_send(0.0)
    r.receive_packet(ACK, [1], None, b"", 0.1)
    r.receive_packet(ACK, [2], None, b"", 0.2)
    assert r.packets_to_send(0.2) == []
    r.receive_packet(ACK, [3], None, b"", 0.3)
    assert r.get_timer() == 0.3  # due now
    (pkt,) = r.packets_to_send(0.3)
    assert pkt.message_id == 0
    assert r.stats.fast_retransmits == 1
    # The count restarts: one more higher ACK does not trigger it again...
    r.receive_packet(ACK, [4], None, b"", 0.4)
    assert r.packets_to_send(0.4) == []
    # ...and the backoff doubled as for any transmission.
    assert r.get_timer() == pytest.approx(0.3 + 4.0)


def test_schedule_now_bursts_and_resets_backoff() -> None:
    r = ReliableTransport()
    r.send(CONTROL, b"a")
    r.send(CONTROL, b"b")
    r.packets_to_send(0.0)
    r.packets_to_send(2.0)
    r.packets_to_send(6.0)  # timeouts now 8
    assert r.get_timer() == 14.0
    r.schedule_now(7.0)
    assert r.get_timer() == 7.0
    assert ids(r.packets_to_send(7.0)) == [0, 1]
    assert r.get_timer() == 9.0  # back to the initial 2 s


# ------------------------------------------------------------------------- ACKs out


def test_mru_re_acks_recent_ids() -> None:
    r = ReliableTransport()
    for mid in range(3):
        r.receive_packet(CONTROL, [], mid, b"m", 0.0)
        r.packets_to_send(0.0)
    r.send(CONTROL, b"reply")
    (pkt,) = r.packets_to_send(0.5)
    # Nothing pending any more, but the recent ACKs ride along again (newest first).
    assert pkt.acks == (2, 1, 0)
    assert pkt.message_id == 0


def test_pending_acks_come_first_and_piggyback_limit_holds() -> None:
    r = ReliableTransport()
    for mid in range(6):
        r.receive_packet(CONTROL, [], mid, b"m", 0.0)
        r.packets_to_send(0.0)
    r.receive_packet(CONTROL, [], 6, b"m", 1.0)
    r.receive_packet(CONTROL, [], 7, b"m", 1.0)
    r.send(CONTROL, b"reply")
    (pkt,) = r.packets_to_send(1.0)
    assert pkt.acks == (6, 7, 5, 4)
    assert len(set(pkt.acks)) == len(pkt.acks)


def test_bare_ack_carries_up_to_8_and_mru_holds_8() -> None:
    r = ReliableTransport()
    for mid in range(12):
        r.receive_packet(CONTROL, [], mid, b"m", 0.0)
        r.messages_received()
        r.packets_to_send(0.0)
    r.receive_packet(CONTROL, [], 3, b"m", 1.0)  # a duplicate re-enters the pending set
    (bare,) = r.packets_to_send(1.0)
    assert bare.opcode == ACK and bare.message_id is None
    assert bare.acks == (3, 11, 10, 9, 8, 7, 6, 5)


def test_leftover_acks_go_out_in_a_bare_ack_after_message_packets() -> None:
    r = ReliableTransport(piggyback_acks=2)
    for mid in range(5):
        r.receive_packet(CONTROL, [], mid, b"m", 0.0)
    r.send(CONTROL, b"reply")
    out = r.packets_to_send(0.0)
    assert [p.message_id for p in out] == [0, None]
    assert out[0].acks == (0, 1)
    assert out[1].acks[:3] == (2, 3, 4)
    assert set(out[0].acks) | set(out[1].acks) == {0, 1, 2, 3, 4}
    for p in out:
        assert len(p.acks) <= 8 and len(set(p.acks)) == len(p.acks)


def test_small_ack_packet_limit_splits_bare_acks() -> None:
    r = ReliableTransport(ack_packet_acks=4)
    for mid in range(6):
        r.receive_packet(CONTROL, [], mid, b"m", 0.0)
    out = r.packets_to_send(0.0)
    assert [p.opcode for p in out] == [ACK, ACK]
    assert out[0].acks == (0, 1, 2, 3)
    assert out[1].acks == (4, 5, 0, 1)
    assert all(len(p.acks) <= 4 for p in out)


def test_undrained_receive_buffers_stop_acceptance() -> None:
    r = ReliableTransport(recv_window=3)
    for mid in range(3):
        r.receive_packet(CONTROL, [], mid, b"m", 0.0)
    r.receive_packet(CONTROL, [], 3, b"m", 0.0)  # in window after 0..2, but no buffer free
    assert r.stats.no_buffer == 1
    assert sorted(r.packets_to_send(0.0)[0].acks) == [0, 1, 2]
    assert len(r.messages_received()) == 3
    r.receive_packet(CONTROL, [], 3, b"m", 1.0)
    assert r.stats.received == 4


def test_no_ack_for_pure_ack_packets() -> None:
    r = ReliableTransport()
    r.send(CONTROL, b"a")
    r.packets_to_send(0.0)
    r.receive_packet(ACK, [0], None, b"", 0.1)
    assert r.packets_to_send(0.1) == []


# ------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"send_window": 0},
        {"recv_window": 0},
        {"initial_timeout": 0},
        {"initial_timeout": 5, "max_timeout": 4},
        {"max_queue": 0},
        {"piggyback_acks": 9},
        {"piggyback_acks": 0},
        {"ack_packet_acks": 9},
        {"initial_acks": range(9)},
        {"initial_acks": (-1,)},
        {"next_send_id": -1},
    ],
)
def test_bad_config_raises_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ReliableTransport(**kwargs)  # type: ignore[arg-type]


def test_two_endpoints_exchange_messages() -> None:
    a = ReliableTransport(next_send_id=1, next_recv_id=1, initial_acks=(0,))
    b = ReliableTransport(next_send_id=1, next_recv_id=1)
    for i in range(20):
        a.send(CONTROL, b"a%d" % i)
        b.send(CONTROL, b"b%d" % i)
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    now = 0.0
    for _ in range(50):
        for src, dst, got in ((a, b, got_b), (b, a, got_a)):
            for p in src.packets_to_send(now):
                dst.receive_packet(p.opcode, p.acks, p.message_id, p.payload, now)
            got.extend(payload for _, payload in dst.messages_received())
        now += 0.01
        if a.all_acked and b.all_acked:
            break
    assert got_b == [b"a%d" % i for i in range(20)]
    assert got_a == [b"b%d" % i for i in range(20)]
    assert a.stats.retransmitted == 0 and b.stats.retransmitted == 0
