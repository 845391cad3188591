"""The library API (trio only): `trivpn.connect` for a client tunnel, `trivpn.serve` for an
embedded server. docs/api.md is the guide; every example there is run by the tests.

The server half (`serve`, `ServedServer`, `ServedClient`) is imported on first use: it
pulls in the whole server package (about 25 modules), which a client tunnel — `trivpn
ping`, an app that only connects — never runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trivpn.api.events import Counters, Down, Reconnecting, Renegotiated, TunnelEvent, Up
from trivpn.api.tunnel import Tunnel, connect

if TYPE_CHECKING:
    from trivpn.api.server import ServedClient, ServedServer, serve

_SERVER = ("ServedClient", "ServedServer", "serve")

__all__ = [
    "Counters", "Down", "Reconnecting", "Renegotiated", "ServedClient", "ServedServer", "Tunnel",
    "TunnelEvent", "Up", "connect", "serve",
]


def __getattr__(name: str) -> Any:
    if name in _SERVER:
        value = getattr(importlib.import_module("trivpn.api.server"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trivpn.api' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
