"""Optional test dependencies: skip loudly on a developer machine, fail under CI=true.

Why not `pytest.importorskip`: it skips quietly everywhere, so a CI machine that lost a
test extra (trustme, pyroute2, ...) would go green while silently running fewer tests. The
integration gate in tests/integration/conftest.py follows the same rule for root tests
marked `root`; `require_root` is that rule for root tests outside the gate (a kernel TUN
without openvpn).
"""

from __future__ import annotations

import importlib
import os
import shutil
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = ["in_ci", "not_run", "require_module", "require_root"]


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
        not_run(reason)


def require_root(what: str, commands: Sequence[str] = ("ip",)) -> None:
    """Go on only as root with /dev/net/tun and `commands` on PATH; else fail under CI=true,
    skip loudly otherwise. `what` names the tests in the reason ("TUN offload test")."""
    missing = [] if os.geteuid() == 0 else ["root (euid 0)"]
    missing += [f"the `{c}` command" for c in commands if shutil.which(c) is None]
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    if missing:
        not_run(f"{what} needs " + ", ".join(missing))


def not_run(reason: str) -> NoReturn:
    """Fail the test under CI=true; else skip it (or, at a module's top, the module) with a
    warning too, so the skip shows in pytest's warnings summary and not only with `-rs`."""
    if in_ci():
        pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
    warnings.warn(f"SKIPPING a test: {reason}", UserWarning, stacklevel=3)
    pytest.skip(f"NOT RUN: {reason}", allow_module_level=True)
