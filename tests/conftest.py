"""Shared test configuration.

Hypothesis profiles: `trivpn-ci` (default, quick) and `trivpn-thorough` (many examples).
Choose with the environment variable TRIVPN_HYPOTHESIS_PROFILE, e.g.

    TRIVPN_HYPOTHESIS_PROFILE=trivpn-thorough python -m pytest tests/property
"""

from __future__ import annotations

import os

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
