"""Which parsed server options this first `trivpn serve` honours, and what happens to the rest.

The parser accepts every option of issue 12's list; the service does not implement all of
them yet. Ignoring some would let clients in that the configuration means to keep out
(a client-connect script that can refuse, client certificates made optional), so
those are errors; the others are one-line warnings, like an unknown option.
"""

from __future__ import annotations

from trivpn.errors import ConfigError
from trivpn.server.config_model import ServerConfig

__all__ = ["check_served"]


def check_served(cfg: ServerConfig) -> list[str]:
    """Warnings for ignored options; ConfigError for the first one unsafe to ignore."""
    unsafe = [
        (cfg.compression is not None, "comp-lzo/compress", "the compression framing is not served yet"),
    ]
    if cfg.management_client_auth and cfg.management is None:
        raise ConfigError("option 'management-client-auth' needs 'management' (who else would approve clients?)")
    for bad, name, why in unsafe:
        if bad:
            raise ConfigError(f"option '{name}' is not supported by trivpn serve yet: {why}")
    ignored = [
        (cfg.connect_freq is not None, "connect-freq"),
    ]
    return [f"option '{name}' is not supported by trivpn serve yet and was ignored" for bad, name in ignored if bad]
