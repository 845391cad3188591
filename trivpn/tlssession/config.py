"""The fixed configuration of one session's key schedule (keyschedule.py), either role."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trivpn.errors import ConfigError
from trivpn.records import dataclass
from trivpn.tlssession.negotiation import CipherPolicy, PeerInfo

#: OpenVPN's tran-window default: how long the lame-duck key keeps decrypting.
TRANSITION_WINDOW = 3600.0

#: Server: the base PUSH_REPLY options, or a callable making them from the client's PeerInfo.
PushSource = tuple[str, ...] | Callable[[PeerInfo], Sequence[str]]


@dataclass(frozen=True, slots=True)
class KeyScheduleConfig:
    """Everything the key schedule of one session needs to know, fixed for its lifetime.

    `keepalive` is (ping, ping-restart, ping-exit); on the client, pushed values win.
    `push` (server) is the base PUSH_REPLY option list, or a callable that makes it from
    the client's PeerInfo; `peer_id` (server) is pushed to DATA_V2 clients.
    """

    role: str
    policy: CipherPolicy
    reneg_sec: float = 3600.0
    reneg_bytes: int = 0
    reneg_pkts: int = 0
    hand_window: float = 60.0
    transition_window: float = TRANSITION_WINDOW
    keepalive: tuple[float, float, float] = (0.0, 0.0, 0.0)
    wrap_key: bytes | None = None
    pull: bool = True
    push: PushSource = ()
    peer_id: int | None = None
    #: server: hold key 0 after key method 2 for an AuthVerdict (auth-user-pass-verify)
    verify_auth: bool = False
    #: server: hold every renegotiated key too until an AuthVerdict (the password or the
    #: auth-token is checked again, as OpenVPN does at each renegotiation)
    reauth: bool = False

    def __post_init__(self) -> None:
        if self.role not in ("client", "server"):
            raise ConfigError(f"role must be client or server, not {self.role!r}")
        if self.hand_window <= 0 or self.transition_window < 0 or self.reneg_sec < 0:
            raise ConfigError("hand-window must be positive; reneg-sec and tran-window not negative")
        if self.reneg_bytes < 0 or self.reneg_pkts < 0:
            raise ConfigError("reneg-bytes and reneg-pkts must not be negative")
        if self.wrap_key is not None and len(self.wrap_key) != 256:
            raise ConfigError("the wrap key mixed into dynamic tls-crypt must be 256 bytes")
