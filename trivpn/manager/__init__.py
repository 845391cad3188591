"""The manager ⇄ tunnel control protocol: an unprivileged tunnel driven by a manager.

The privileged *manager* owns the TUN device and the system's network settings; the
unprivileged *tunnel* (trivpn's engine) speaks OpenVPN. They talk over one byte stream
(two pipes or a Unix socket): a text header each way, then length-prefixed protobuf
messages (`manager.proto`). See docs/manager-protocol.md.

Library use (as root)::

    from trivpn.manager import open_tunnel

    async with open_tunnel("client.ovpn") as tunnel:
        async for update in tunnel.peer_updates():
            print(update)

Names are loaded lazily so `trivpn connect` does not pay for protobuf.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CURRENT_VERSIONS",
    "ManagedTunnel",
    "RPCClosed",
    "Speaker",
    "Tunnel",
    "open_tunnel",
]

_WHERE = {
    "open_tunnel": "trivpn.manager.session",
    "ManagedTunnel": "trivpn.manager.session",
    "Speaker": "trivpn.manager.speaker",
    "RPCClosed": "trivpn.manager.speaker",
    "CURRENT_VERSIONS": "trivpn.manager.speaker",
    "Tunnel": "trivpn.manager.tunnel",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'trivpn.manager' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
