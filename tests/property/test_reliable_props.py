"""Property tests: two reliable cores over a hostile modelled link (drop, reorder, duplicate, delay).

Hypothesis profiles `trivpn-ci` (default) and `trivpn-thorough` are (re-)registered here with
the same values as tests/conftest.py, so this module also works when run on its own; choose one
with TRIVPN_HYPOTHESIS_PROFILE=trivpn-thorough.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from trivpn.reliabletransport.core import (
    RELIABLE_ACK_SIZE,
    OutgoingPacket,
    ReliableTransport,
)

# hypothesis profiles (trivpn-ci / trivpn-thorough) are registered in tests/conftest.py


ACK = 5
OPCODES = st.sampled_from([3, 4, 11])
SIDES = st.integers(0, 1)
INDEX = st.integers(0, 10_000)
MAX_LINK = 256  # packets queued per direction; beyond that the oldest is lost
HEAL_MAX_DELIVERIES = 20_000


class LossyLinkMachine(RuleBasedStateMachine):
    """Endpoint 0 and 1; links[i] holds packets sent by i that endpoint 1-i has not yet seen."""

    @initialize(
        send_window=st.sampled_from([1, 2, 3, 6]),
        recv_window=st.sampled_from([1, 2, 4, 12]),
        piggyback=st.integers(1, 4),
        ack_packet=st.sampled_from([4, 8]),
        max_queue=st.integers(1, 20),
        max_timeout=st.sampled_from([8.0, 60.0]),
    )
    def setup(
        self,
        send_window: int,
        recv_window: int,
        piggyback: int,
        ack_packet: int,
        max_queue: int,
        max_timeout: float,
    ) -> None:
        self.now = 0.0
        self.send_window = send_window
        self.recv_window = recv_window
        self.piggyback = piggyback
        self.ack_packet = ack_packet
        self.max_queue = max_queue
        self.ends = [
            ReliableTransport(
                next_send_id=1,
                next_recv_id=1,
                initial_acks=(0,),
                send_window=send_window,
                recv_window=recv_window,
                piggyback_acks=piggyback,
                ack_packet_acks=ack_packet,
                max_queue=max_queue,
                max_timeout=max_timeout,
            )
            for _ in range(2)
        ]
        self.links: list[list[OutgoingPacket]] = [[], []]
        self.sent: list[list[tuple[int, bytes]]] = [[], []]  # what endpoint i sent
        self.delivered: list[list[tuple[int, bytes]]] = [[], []]  # what endpoint i received
        self.first_packet_checked = [False, False]
        self.counter = 0

    # ---------------------------------------------------------------- helpers

    def _check_packet(self, side: int, pkt: OutgoingPacket) -> None:
        acks = pkt.acks
        assert len(acks) <= RELIABLE_ACK_SIZE
        assert len(set(acks)) == len(acks)
        if pkt.message_id is None:
            assert pkt.opcode == ACK and pkt.payload == b""
            assert len(acks) <= self.ack_packet
        else:
            assert len(acks) <= self.piggyback
            end = self.ends[side]
            lowest = next(iter(end._unacked))
            assert lowest <= pkt.message_id < lowest + self.send_window
        if not self.first_packet_checked[side]:
            # The HMAC-cookie rule: the first packet after the reset must ACK id 0.
            assert 0 in acks
            self.first_packet_checked[side] = True

    def _pump(self, side: int) -> None:
        out = self.ends[side].packets_to_send(self.now)
        for pkt in out:
            self._check_packet(side, pkt)
        link = self.links[side]
        link.extend(out)
        if len(link) > MAX_LINK:
            del link[: len(link) - MAX_LINK]

    def _deliver(self, side: int, pkt: OutgoingPacket) -> None:
        dst = 1 - side
        end = self.ends[dst]
        end.receive_packet(pkt.opcode, pkt.acks, pkt.message_id, pkt.payload, self.now)
        got = end.messages_received()
        self.delivered[dst].extend(got)
        n = len(self.delivered[dst])
        assert self.delivered[dst] == self.sent[side][:n], "out of order, lost or duplicated"

    def _fire_timers(self) -> None:
        for side, end in enumerate(self.ends):
            deadline = end.get_timer()
            if deadline is not None and deadline <= self.now:
                end.handle_timer(self.now)
            self._pump(side)

    # ------------------------------------------------------------------ rules

    @rule(side=SIDES, opcode=OPCODES, size=st.integers(0, 40))
    def send_message(self, side: int, opcode: int, size: int) -> None:
        end = self.ends[side]
        if end.queue_space() == 0:
            return
        self.counter += 1
        payload = self.counter.to_bytes(4, "big") + bytes(size)
        msg_id = end.send(opcode, payload)
        assert msg_id == len(self.sent[side]) + 1
        self.sent[side].append((opcode, payload))

    @rule(side=SIDES)
    def pump(self, side: int) -> None:
        self._pump(side)

    @precondition(lambda self: self.links[0] or self.links[1])
    @rule(side=SIDES, index=INDEX, then_pump=st.booleans())
    def deliver(self, side: int, index: int, then_pump: bool) -> None:
        link = self.links[side] or self.links[1 - side]
        side = side if self.links[side] else 1 - side
        self._deliver(side, link.pop(index % len(link)))
        if then_pump:
            self._pump(1 - side)

    @precondition(lambda self: self.links[0] or self.links[1])
    @rule(side=SIDES, index=INDEX)
    def drop(self, side: int, index: int) -> None:
        link = self.links[side] or self.links[1 - side]
        link.pop(index % len(link))

    @precondition(lambda self: self.links[0] or self.links[1])
    @rule(side=SIDES, index=INDEX)
    def duplicate(self, side: int, index: int) -> None:
        link = self.links[side] or self.links[1 - side]
        if len(link) < MAX_LINK:
            link.append(link[index % len(link)])

    @precondition(lambda self: self.links[0] or self.links[1])
    @rule(side=SIDES, i=INDEX, j=INDEX)
    def reorder(self, side: int, i: int, j: int) -> None:
        link = self.links[side] or self.links[1 - side]
        i %= len(link)
        j %= len(link)
        link[i], link[j] = link[j], link[i]

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0, 8.0, 30.0, 61.0]))
    def advance_time(self, dt: float) -> None:
        self.now += dt
        self._fire_timers()

    @rule(side=SIDES)
    def burst(self, side: int) -> None:
        self.ends[side].schedule_now(self.now)
        self._pump(side)

    # ------------------------------------------------------------- invariants

    @invariant()
    def delivery_is_an_in_order_prefix(self) -> None:
        for side in (0, 1):
            n = len(self.delivered[1 - side])
            assert self.delivered[1 - side] == self.sent[side][:n]

    @invariant()
    def buffers_stay_within_bounds(self) -> None:
        for end in self.ends:
            assert len(end._unacked) <= self.max_queue
            assert end.queue_space() == self.max_queue - len(end._unacked)
            transmitted = [i for i, e in end._unacked.items() if e.next_try is not None]
            assert len(transmitted) <= self.send_window
            if transmitted:
                lowest = next(iter(end._unacked))
                assert max(transmitted) < lowest + self.send_window
            assert len(end._recv_buffer) + len(end._ready) <= self.recv_window
            nxt = end._next_recv_id
            assert all(nxt < i < nxt + self.recv_window for i in end._recv_buffer)
            assert len(end._pending_acks) <= RELIABLE_ACK_SIZE
            assert len(set(end._pending_acks)) == len(end._pending_acks)
            assert len(end._mru) <= RELIABLE_ACK_SIZE
            assert all(e.timeout <= 60.0 for e in end._unacked.values())
            assert end.all_acked == (not end._unacked)

    # ----------------------------------------------------------------- healing

    def _flush_links(self) -> None:
        """Deliver everything in FIFO order, loss-free, pumping after every packet."""
        budget = HEAL_MAX_DELIVERIES
        while self.links[0] or self.links[1]:
            for side in (0, 1):
                if self.links[side]:
                    self._deliver(side, self.links[side].pop(0))
                    self._pump(1 - side)
                    budget -= 1
            assert budget > 0, "healed link does not quiesce"

    def _done(self) -> bool:
        return (
            all(end.all_acked for end in self.ends)
            and self.delivered[1] == self.sent[0]
            and self.delivered[0] == self.sent[1]
        )

    def teardown(self) -> None:
        if not hasattr(self, "ends"):
            return
        # Heal: no more drops. Everything must arrive within a few timer firings: each
        # in-flight message (at most send_window per side) needs at most one more timeout.
        # A receive window narrower than the send window discards packets that overtake a
        # hole, so then every queued message may need its own retransmission, plus one
        # useless one fired while its predecessor was still missing (found by hypothesis:
        # send_window 2, recv_window 1, 4 queued messages took 7 firings).
        if self.recv_window >= self.send_window:
            bound = 2 * self.send_window + 2
        else:
            bound = 2 * 2 * self.max_queue + 2
        firings = 0
        self._pump(0)
        self._pump(1)
        while True:
            self._flush_links()
            if self._done():
                break
            deadlines = [t for end in self.ends if (t := end.get_timer()) is not None]
            assert deadlines, "work left but no timer armed"
            firings += 1
            assert firings <= bound, f"not healed after {bound} timer firings"
            self.now = max(self.now, min(deadlines))
            self._fire_timers()
        for end in self.ends:
            assert end.get_timer() is None
            assert not end._pending_acks


TestLossyLink = LossyLinkMachine.TestCase


# ------------------------------------------------------------- garbage in


ID = st.one_of(st.integers(0, 40), st.integers(-(2**33), 2**33))


@given(
    packets=st.lists(
        st.tuples(
            st.sampled_from([3, 4, 5, 11]),
            st.lists(ID, max_size=8),
            st.one_of(st.none(), ID),
            st.binary(max_size=8),
            st.floats(0, 1000, allow_nan=False),
        ),
        max_size=40,
    ),
    sends=st.integers(0, 10),
)
def test_arbitrary_input_never_raises_and_keeps_bounds(
    packets: list[tuple[int, list[int], int | None, bytes, float]], sends: int
) -> None:
    r = ReliableTransport(next_send_id=1, next_recv_id=1, initial_acks=(0,))
    for i in range(sends):
        r.send(4, bytes([i]))
    r.packets_to_send(0.0)
    expected_next = 1
    for opcode, acks, mid, payload, now in packets:
        r.receive_packet(opcode, acks, mid, payload, now)
        for _, got in r.messages_received():
            assert got is not None
            expected_next += 1
        assert r._next_recv_id == expected_next
        for pkt in r.packets_to_send(now):
            assert len(pkt.acks) <= RELIABLE_ACK_SIZE
            assert len(set(pkt.acks)) == len(pkt.acks)
        assert len(r._pending_acks) <= RELIABLE_ACK_SIZE
        assert len(r._recv_buffer) <= 12
    s = r.stats
    assert s.delivered == s.received - len(r._recv_buffer)
