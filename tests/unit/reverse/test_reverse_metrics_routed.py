"""`/metrics` of a relay with name-routed ports shows what those ports turned away."""

from __future__ import annotations

from trivpn.reverse.metrics import Metrics, make_registry, render


def test_routed_refusals_and_evictions_are_exported_only_with_a_router() -> None:
    groups = {"alice": [Metrics()]}
    text = render(make_registry(lambda: groups, lambda: (268, 5))).decode()
    assert "trivpn_reverse_routed_refused_total 268.0" in text, text
    assert "trivpn_reverse_routed_evicted_total 5.0" in text, text
    assert 'trivpn_reverse_streams_total{client="alice"} 0.0' in text
    plain = render(make_registry(lambda: groups)).decode()
    assert "routed" not in plain
