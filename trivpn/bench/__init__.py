"""Benchmarks: `python -m trivpn.bench vpn | impaired | reverse` (each needs root).

Nothing here is imported by the engine; the sub-commands load their modules lazily so a
missing optional one (or matplotlib) never breaks another.
"""

from __future__ import annotations
