"""`cli_common.StartupSignals`: what `trivpn serve` keeps before its workers manager listens."""

from __future__ import annotations

import signal

from trivpn.cli_common import StartupSignals


def test_a_flood_of_signals_during_start_up_is_kept_once_per_kind() -> None:
    """A signal storm during the imports must not grow a list without bound: each kind is
    kept once, in order of first arrival, and handed out once."""
    before = {sig: signal.getsignal(sig) for sig in StartupSignals.SIGNALS}
    try:
        kept = StartupSignals()
        for _ in range(500):
            signal.raise_signal(signal.SIGUSR2)
            signal.raise_signal(signal.SIGHUP)
        assert kept.take() == [signal.SIGUSR2, signal.SIGHUP]
        assert kept.take() == []
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
