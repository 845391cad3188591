"""What a client run tells its owner as it goes (the library turns these into
`trivpn.api` events and keeps `Tunnel.info` current). Plain data; no trio here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trivpn.messages import KeysRenegotiated
from trivpn.records import dataclass
from trivpn.session.netsettings import TunnelInfo

__all__ = ["KeysRenegotiated", "OnRunEvent", "RunEvent", "SessionRetry", "SessionUp"]


@dataclass(frozen=True, slots=True)
class SessionUp:
    """A session's tunnel is up (the first one, or one after a reconnect)."""

    info: TunnelInfo
    #: the live `trivpn.session.clientstack.ClientSession` (its data-channel counters)
    session: Any


@dataclass(frozen=True, slots=True)
class SessionRetry:
    """A session ended and the next attempt starts after `delay` seconds."""

    reason: str
    delay: float


RunEvent = SessionUp | SessionRetry | KeysRenegotiated
#: Called synchronously from the client's task: must not block or raise.
OnRunEvent = Callable[[RunEvent], None]
