"""Shared test configuration.

Hypothesis profiles: `trivpn-ci` (default, quick) and `trivpn-thorough` (many examples).
Choose with the environment variable TRIVPN_HYPOTHESIS_PROFILE, e.g.

    TRIVPN_HYPOTHESIS_PROFILE=trivpn-thorough python -m pytest tests/property

`fuzz_reach`: the fuzz smoke run (tests/test_fuzz_smoke.py) records there how many inputs
reached each decoder stage; the figures are printed in a `fuzz reach` summary section.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "trivpn-ci",
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "trivpn-thorough",
    max_examples=2000,
    stateful_step_count=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("TRIVPN_HYPOTHESIS_PROFILE", "trivpn-ci"))

_fuzz_reach_key = pytest.StashKey[dict[str, dict[str, int]]]()


@pytest.fixture(scope="session")
def fuzz_reach(pytestconfig: pytest.Config) -> dict[str, dict[str, int]]:
    """harness -> {stage: inputs that reached it}, shown at the end of the run."""
    return pytestconfig.stash.setdefault(_fuzz_reach_key, {})


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]  # pytest's TerminalReporter is not public API
    reach = config.stash.get(_fuzz_reach_key, {})
    if not reach:
        return
    terminalreporter.section("fuzz reach (inputs of the smoke run that got there)")
    for harness, stages in sorted(reach.items()):
        for stage, count in stages.items():
            terminalreporter.write_line(f"{harness:22s} {stage:40s} {count:6,d}")
