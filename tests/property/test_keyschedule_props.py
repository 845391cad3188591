"""A client KeySchedule and a server KeySchedule driven against each other by hypothesis.

Real TLS in memory (helpers.keyschedule_pair). Any interleaving of time, renegotiation
requests from either side, usage reports and lost or duplicated soft resets must keep:
at most one primary, one pending and one lame-duck key per side; lame ducks retired on
time; both sides on the same primary key with the same key block whenever neither is
negotiating; no Restart/Fatal and no exception.
"""

from __future__ import annotations

from helpers.keyschedule_pair import Pair, client_config, server_config
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from trivpn.messages import ActivateKey, Ciphertext, InstallKey, KeyUsage, SoftReset
from trivpn.tlssession.keyschedule import Fatal, Restart

HAND_WINDOW = 20.0
TRANSITION_WINDOW = 30.0
SIDES = st.sampled_from(["client", "server"])
DIRECTIONS = st.sampled_from(["c2s", "s2c"])


class KeyScheduleMachine(RuleBasedStateMachine):
    @initialize(
        client_reneg=st.sampled_from([0.0, 15.0, 45.0]),
        server_reneg=st.sampled_from([0.0, 25.0]),
        reneg_bytes=st.sampled_from([0, 1000]),
    )
    def connect(self, client_reneg: float, server_reneg: float, reneg_bytes: int) -> None:
        common = {"hand_window": HAND_WINDOW, "transition_window": TRANSITION_WINDOW, "reneg_bytes": reneg_bytes}
        self.p = Pair(
            client=client_config(reneg_sec=client_reneg, **common),
            server=server_config(reneg_sec=server_reneg, **common),
        )
        self.lose_next: set[str] = set()
        self.dup_next: set[str] = set()
        #: (direction, key id) → until when everything of that key is lost that way
        self.blackhole: dict[tuple[str, int], float] = {}
        self.moved = {"client": [0, 0], "server": [0, 0]}
        self.p.connect()
        assert self.p.client.ks.primary == 0 == self.p.server.ks.primary

    def _copies(self, direction: str, item: SoftReset | Ciphertext) -> int:
        if self.p.now < self.blackhole.get((direction, item.key_id), -1.0):
            return 0
        if isinstance(item, SoftReset):
            if direction in self.lose_next:
                # the peer is unreachable for this key: its reset and all that follows is
                # lost until both ends gave the key up (key ids are reused after a wrap)
                self.lose_next.discard(direction)
                self.blackhole[direction, item.key_id] = self.p.now + HAND_WINDOW
                return 0
            if direction in self.dup_next:
                self.dup_next.discard(direction)
                return 2
        return 1

    def _pump(self) -> None:
        self.p.pump(copies=self._copies)

    @rule(seconds=st.floats(min_value=0.5, max_value=40.0))
    def advance(self, seconds: float) -> None:
        self.p.now += seconds
        for side in (self.p.client, self.p.server):
            deadline = side.ks.get_timer()
            if deadline is not None and deadline <= self.p.now:
                side.ks.handle_timer(self.p.now)
        self._pump()

    @rule(side=SIDES)
    def renegotiate(self, side: str) -> None:
        getattr(self.p, side).ks.renegotiate("hypothesis", self.p.now)
        self._pump()

    @rule(side=SIDES, nbytes=st.integers(0, 800), wrap=st.booleans())
    def usage(self, side: str, nbytes: int, wrap: bool) -> None:
        counters = self.moved[side]
        counters[0] += nbytes
        counters[1] += 1
        end = getattr(self.p, side)
        end.ks.receive_usage(KeyUsage(end.data_primary, counters[0], counters[1], wrap), self.p.now)
        self._pump()

    @rule(direction=DIRECTIONS)
    def lose_next_soft_reset(self, direction: str) -> None:
        self.lose_next.add(direction)

    @rule(direction=DIRECTIONS)
    def duplicate_next_soft_reset(self, direction: str) -> None:
        self.dup_next.add(direction)

    @invariant()
    def at_most_three_keys_each(self) -> None:
        for end in (self.p.client, self.p.server):
            ks = end.ks
            slots = [k for k in (ks.primary, ks.pending, ks.lame_duck) if k is not None]
            assert len(slots) == len(set(slots)), slots
            assert set(ks.sessions) <= set(slots), (ks.sessions.keys(), slots)
            assert ks.primary is not None
            assert end.data_primary == ks.primary and len(end.installed) <= 2
            assert set(end.installed) == {k for k in (ks.primary, ks.lame_duck) if k is not None}

    @invariant()
    def lame_ducks_retire_on_time(self) -> None:
        for ks in (self.p.client.ks, self.p.server.ks):
            if ks.lame_duck is not None:
                assert self.p.now < ks._lame_until <= self.p.now + TRANSITION_WINDOW

    @invariant()
    def only_the_server_sends_late_and_activates_in_time(self) -> None:
        c, s = self.p.client, self.p.server
        assert all(e.send_now for e in c.events if isinstance(e, InstallKey))
        assert not any(isinstance(e, ActivateKey) for e in c.events)
        late: set[int] = set()
        for e in s.events:
            if isinstance(e, InstallKey):
                assert e.send_now == (e.key_id == 0)  # renegotiated keys: receive first
                late = set() if e.send_now else {e.key_id}  # a newer key supersedes
            elif isinstance(e, ActivateKey):
                assert e.key_id in late  # only the newest receive-only key
        pending = s.ks._activate
        if pending is not None:
            assert pending[0] == s.ks.primary and pending[1] <= s.ks._lame_until

    @invariant()
    def both_ends_agree_when_idle(self) -> None:
        c, s = self.p.client, self.p.server
        if c.ks.pending is None and s.ks.pending is None:
            assert c.ks.primary == s.ks.primary
            assert c.installed[c.data_primary or 0] == s.installed[s.data_primary or 0]

    @invariant()
    def the_session_never_ends(self) -> None:
        for end in (self.p.client, self.p.server):
            assert not end.ks.closed
            assert not any(isinstance(e, Restart | Fatal) for e in end.events)


    def teardown(self) -> None:
        if hasattr(self, "p"):  # --hypothesis-show-statistics: how much was exercised
            n = self.p.client.ks.renegotiations
            event(f"renegotiations: {'0' if n == 0 else '1-3' if n < 4 else '4+'}")
            event(f"lost soft resets: {bool(self.blackhole)}")


TestKeySchedule = KeyScheduleMachine.TestCase
