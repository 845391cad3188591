"""The reliable layer's key lifecycle (`ReliableKeys`), without trio."""

from __future__ import annotations

from trivpn.controlchannel.packet import ControlPacket
from trivpn.messages import ReliableMessage
from trivpn.reliabletransport.keys import MAX_KEYS, ReliableKeys, after_hard_reset
from trivpn.wire import Opcode

SID = b"\x01" * 8
SOFT = Opcode.CONTROL_SOFT_RESET_V1
CTRL = Opcode.CONTROL_V1


def _pkt(key_id: int, opcode: Opcode, message_id: int, payload: bytes = b"") -> ControlPacket:
    return ControlPacket(opcode, key_id, SID, (), None, message_id, payload)


def test_key_zero_starts_in_the_role_state() -> None:
    client = ReliableKeys()
    client.open_first()
    # the client owes the ACK of the server's reset: its first packet out carries ACK 0
    client.send(ReliableMessage(0, CTRL, b"hello"))
    (out,) = client.packets_to_send(0.0)
    assert out.key_id == 0 and out.packets[0].message_id == 1 and 0 in out.packets[0].acks
    server = ReliableKeys(is_server=True)
    server.open_first()
    server.send(ReliableMessage(0, CTRL, b"hello"))
    (out,) = server.packets_to_send(0.0)
    assert out.packets[0].message_id == 1 and out.packets[0].acks == ()
    assert after_hard_reset(True).get_timer() is None


def test_unknown_key_is_dropped_unless_a_soft_reset_opens_it() -> None:
    keys = ReliableKeys()
    keys.open_first()
    keys.receive_packet(_pkt(3, CTRL, 0, b"x"), 0.0)
    assert keys.dropped_unknown_key == 1 and 3 not in keys.cores
    keys.send(ReliableMessage(3, CTRL, b"y"))
    assert keys.dropped_unknown_key == 2
    keys.receive_packet(_pkt(1, SOFT, 0), 0.0)
    assert 1 in keys.cores
    assert [m.key_id for m in keys.messages_received()] == [1]


def test_our_answer_reuses_the_core_the_peer_opened() -> None:
    keys = ReliableKeys()
    keys.open_first()
    keys.receive_packet(_pkt(1, SOFT, 0), 0.0)
    core = keys.cores[1]
    keys.send(ReliableMessage(1, SOFT, b""))
    assert keys.cores[1] is core  # same sequence: our reset is message 0 of our direction
    out = {o.key_id: o for o in keys.packets_to_send(0.0)}
    assert out[1].packets[0].message_id == 0 and 0 in out[1].packets[0].acks


def test_our_own_soft_reset_opens_a_fresh_key() -> None:
    keys = ReliableKeys()
    keys.open_first()
    keys.send(ReliableMessage(2, SOFT, b""))
    assert set(keys.cores) == {0, 2}
    (pkts,) = [o for o in keys.packets_to_send(0.0) if o.key_id == 2]
    assert pkts.packets[0].message_id == 0


def test_at_most_two_keys_are_kept_oldest_first_out() -> None:
    keys = ReliableKeys()
    keys.open_first()
    for kid in (1, 2, 3, 4, 5, 6, 7, 1):
        keys.send(ReliableMessage(kid, SOFT, b""))
        assert len(keys.cores) <= MAX_KEYS
        assert kid in keys.cores
    assert list(keys.cores) == [7, 1]


def test_timer_is_the_earliest_core_deadline_and_fires_retransmissions() -> None:
    keys = ReliableKeys(is_server=True)
    keys.open_first()
    assert keys.get_timer() is None  # the server owes no ACK after the reset
    keys.send(ReliableMessage(0, CTRL, b"a"))
    first = keys.packets_to_send(0.0)
    assert first
    deadline = keys.get_timer()
    assert deadline is not None and deadline > 0.0
    keys.handle_timer(deadline)
    again = keys.packets_to_send(deadline)
    assert again and again[0].packets[0].message_id == first[0].packets[0].message_id
