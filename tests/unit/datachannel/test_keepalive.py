"""The pure keepalive core (`datachannel.keepalive`): pings, ping-restart, ping-exit."""

from __future__ import annotations

import pytest

from trivpn.datachannel.keepalive import Keepalive, PeerSilent, SendPing
from trivpn.errors import ConfigError


def test_nothing_before_a_key_or_with_everything_off() -> None:
    ka = Keepalive(ping_interval=10, ping_restart=60)
    assert ka.get_timer() is None
    ka.handle_timer(1e6)
    assert ka.events() == []
    off = Keepalive()
    off.key_installed(0.0)
    assert off.get_timer() is None
    off.handle_timer(1e6)
    assert off.events() == []


def test_ping_one_interval_after_the_last_send() -> None:
    ka = Keepalive(ping_interval=10)
    ka.key_installed(100.0)
    assert ka.get_timer() == 110.0
    ka.handle_timer(109.9)
    assert ka.events() == []
    ka.observe(last_sent=105.0, last_received=0.0)  # the data plane sent something
    assert ka.get_timer() == 115.0
    ka.handle_timer(115.0)
    assert ka.events() == [SendPing()]
    assert ka.events() == []  # reported once
    assert ka.get_timer() == 125.0  # the ping counts as sent
    ka.observe(last_sent=110.0, last_received=0.0)  # older instants never move it back
    assert ka.get_timer() == 125.0


def test_restart_and_exit_count_from_the_last_authentic_packet() -> None:
    ka = Keepalive(ping_interval=10, ping_restart=60, ping_exit=120)
    ka.key_installed(0.0)
    assert ka.get_timer() == 10.0
    ka.observe(last_sent=1000.0, last_received=30.0)
    assert ka.get_timer() == 90.0  # restart deadline before the next ping
    ka.handle_timer(89.0)
    assert ka.events() == []
    ka.handle_timer(90.0)
    assert ka.events() == [PeerSilent(60.0, fatal=False)]
    assert ka.get_timer() is None  # silent: the core stops asking to be woken
    ka.handle_timer(1e6)
    assert ka.events() == []


def test_exit_wins_when_both_are_due() -> None:
    ka = Keepalive(ping_restart=60, ping_exit=30)
    ka.key_installed(0.0)
    assert ka.get_timer() == 30.0
    ka.handle_timer(100.0)
    assert ka.events() == [PeerSilent(30.0, fatal=True)]


def test_a_new_key_counts_as_hearing_from_the_peer() -> None:
    ka = Keepalive(ping_interval=10, ping_restart=60)
    ka.key_installed(0.0)
    ka.key_installed(50.0)  # a renegotiation finished: the peer is alive
    assert ka.get_timer() == 10.0  # the ping timer still runs from the first key
    ka.observe(last_sent=100.0, last_received=0.0)
    assert ka.get_timer() == 110.0
    ka.handle_timer(109.0)
    assert ka.events() == []


@pytest.mark.parametrize("field", ["ping_interval", "ping_restart", "ping_exit"])
def test_negative_settings_are_refused(field: str) -> None:
    with pytest.raises(ConfigError, match="negative"):
        Keepalive(**{field: -1.0})
