"""Optional test dependencies: skip loudly on a developer machine, fail under CI=true.

Why not `pytest.importorskip`: it skips quietly everywhere, so a CI machine that lost a
test extra (trustme, pyroute2, ...) would go green while silently running fewer tests. The
integration gate in tests/integration/conftest.py follows the same rule for root tests.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import pytest

__all__ = ["in_ci", "require_module"]


def in_ci() -> bool:
    """True when the environment says this is CI (CI=true, any case)."""
    return os.environ.get("CI", "").lower() == "true"


def require_module(name: str, extra: str = "test") -> ModuleType:
    """Import and return module `name`; if it is missing, fail under CI=true, else skip.

    A local skip also emits a warning, so it shows in pytest's warnings summary and not
    only in the `-rs` skip list. `extra` names the pyproject extra that installs it. Call
    it in a test, or at a test module's top to skip (or fail) the whole module.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = (
            f"optional test dependency {name!r} is missing ({exc}); "
            f"install it with: python -m pip install -e '.[{extra}]'"
        )
        if in_ci():
            pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
        warnings.warn(f"SKIPPING a test: {reason}", UserWarning, stacklevel=2)
        pytest.skip(f"NOT RUN: {reason}", allow_module_level=True)
