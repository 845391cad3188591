"""trivpn: an OpenVPN-compatible VPN engine on trio's structured concurrency.

`trivpn.connect` is imported lazily so that `import trivpn.<layer>` (tests, fuzzers) does
not pay for the whole engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trivpn.errors import (
    ConfigError,
    FatalError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    TrivpnError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from trivpn.api import Tunnel, connect


def __getattr__(name: str) -> Any:
    if name in ("connect", "Tunnel"):
        from trivpn import api

        return getattr(api, name)
    raise AttributeError(f"module 'trivpn' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "FatalError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "TrivpnError",
    "Tunnel",
    "__version__",
    "connect",
]
