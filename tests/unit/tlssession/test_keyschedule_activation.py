"""KeySchedule: which end seals with a renegotiated key at once (receive early, send late)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from helpers.keyschedule_pair import Pair, client_config, server_config

from trivpn.messages import ActivateKey, InstallKey, RetireKey


def _installs(events: Sequence[object]) -> list[tuple[int, bool]]:
    return [(e.key_id, e.send_now) for e in events if isinstance(e, InstallKey)]


@pytest.mark.parametrize("starter", ["client", "server"])
def test_the_server_installs_renegotiated_keys_receive_only_then_activates(starter: str) -> None:
    p = Pair(client=client_config(transition_window=60), server=server_config(transition_window=60))
    p.connect()
    getattr(p, starter).ks.renegotiate("test", p.now)
    p.pump()
    # the first key sends at once on both ends; renegotiated keys only on the client
    assert _installs(p.client.events) == [(0, True), (1, True)]
    assert _installs(p.server.events) == [(0, True), (1, False)]
    assert p.server.ks.primary == 1 and p.server.ks.lame_duck == 0
    # the fallback for a silent client: ActivateKey after min(hand_window, window / 2) ...
    due = p.server.ks.get_timer()
    assert due == pytest.approx(p.now + 30)  # hand_window 60, transition_window 60
    p.advance(29)
    assert not [e for e in p.server.events if isinstance(e, ActivateKey)]
    p.advance(1)
    assert [e for e in p.server.events if isinstance(e, ActivateKey)] == [ActivateKey(1)]
    # ... long before the lame duck is retired; the client never gets one
    assert not [e for e in p.server.events if isinstance(e, RetireKey)]
    p.advance(30)
    assert [e for e in p.server.events if isinstance(e, RetireKey)] == [RetireKey(0)]
    assert not [e for e in p.client.events if isinstance(e, ActivateKey)]


def test_activation_is_never_later_than_the_hand_window() -> None:
    p = Pair(client=client_config(), server=server_config(hand_window=10))
    p.connect()
    p.client.ks.renegotiate("test", p.now)
    p.pump()
    start = p.now
    p.advance(10)
    assert [e for e in p.server.events if isinstance(e, ActivateKey)] == [ActivateKey(1)]
    assert p.now == start + 10


def test_a_newer_install_supersedes_an_unactivated_key() -> None:
    p = Pair()
    p.connect()
    for _ in range(2):  # two renegotiations in a row, no time passes: no ActivateKey yet
        p.server.ks.renegotiate("test", p.now)
        p.pump()
    assert _installs(p.server.events) == [(0, True), (1, False), (2, False)]
    p.advance(3600)
    # only the newest key is activated (the data channel activates key 1 when key 2 arrives)
    assert [e for e in p.server.events if isinstance(e, ActivateKey)] == [ActivateKey(2)]
