"""The library API (trio only): `trivpn.connect` for a client tunnel, `trivpn.serve` for an
embedded server. docs/api.md is the guide; every example there is run by the tests."""

from __future__ import annotations

from trivpn.api.events import Counters, Down, Reconnecting, Renegotiated, TunnelEvent, Up
from trivpn.api.server import ServedClient, ServedServer, serve
from trivpn.api.tunnel import Tunnel, connect

__all__ = [
    "Counters", "Down", "Reconnecting", "Renegotiated", "ServedClient", "ServedServer", "Tunnel",
    "TunnelEvent", "Up", "connect", "serve",
]
