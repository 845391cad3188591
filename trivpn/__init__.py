"""trivpn: an OpenVPN-compatible VPN engine on trio's structured concurrency.

The library API (trio only; docs/api.md) is imported lazily so that `import trivpn.<layer>`
(tests, fuzzers) does not pay for the whole engine: `trivpn.connect`, `trivpn.serve`, their
`Tunnel`/`ServedServer`, the event types and the profile/config parsers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from trivpn.errors import (
    AuthFailed,
    CertificateRejected,
    CertificateRestart,
    ConfigError,
    ConnectTimeout,
    FatalError,
    Halted,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    RetryLimitReached,
    SessionRestart,
    TrivpnError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from trivpn.api import (
        Counters,
        Down,
        Reconnecting,
        Renegotiated,
        ServedClient,
        ServedServer,
        Tunnel,
        TunnelEvent,
        Up,
        connect,
        serve,
    )
    from trivpn.profile.profile import Profile, load_profile, parse_profile
    from trivpn.server.config import load_server_config, parse_server_config

_LAZY = {
    **{name: "trivpn.api" for name in (
        "Counters", "Down", "Reconnecting", "Renegotiated", "ServedClient", "ServedServer",
        "Tunnel", "TunnelEvent", "Up", "connect", "serve",
    )},
    "Profile": "trivpn.profile.profile",
    "load_profile": "trivpn.profile.profile",
    "parse_profile": "trivpn.profile.profile",
    "load_server_config": "trivpn.server.config",
    "parse_server_config": "trivpn.server.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trivpn' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "AuthFailed",
    "CertificateRejected",
    "CertificateRestart",
    "ConfigError",
    "ConnectTimeout",
    "Counters",
    "Down",
    "FatalError",
    "Halted",
    "LocalProtocolError",
    "Profile",
    "ProtocolError",
    "Reconnecting",
    "RemoteProtocolError",
    "Renegotiated",
    "RetryLimitReached",
    "ServedClient",
    "ServedServer",
    "SessionRestart",
    "TrivpnError",
    "Tunnel",
    "TunnelEvent",
    "Up",
    "__version__",
    "connect",
    "load_profile",
    "load_server_config",
    "parse_profile",
    "parse_server_config",
    "serve",
]
