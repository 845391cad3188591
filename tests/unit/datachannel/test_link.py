"""`DataLink.rx_or_drop` / `tx_or_drop`: the "no key yet: drop and count" step both
directions of the threaded data planes share."""

from __future__ import annotations

from trivpn.datachannel.core import DataChannel
from trivpn.datachannel.link import DataLink


def test_without_keys_the_packets_are_counted_per_direction() -> None:
    link = DataLink(lambda: 0.0)
    assert link.rx_or_drop(3) is None and link.rx_or_drop(2) is None
    assert link.tx_or_drop(4) is None
    assert (link.dropped_up, link.dropped_down) == (5, 4)


def test_with_keys_they_are_returned_and_nothing_is_counted() -> None:
    core = DataChannel(cipher="AES-256-GCM")
    link = DataLink(lambda: 0.0)
    link.rx, link.tx = core.rx, core.tx
    assert link.rx_or_drop(3) is link.rx and link.tx_or_drop(3) is link.tx
    assert (link.dropped_up, link.dropped_down) == (0, 0)
