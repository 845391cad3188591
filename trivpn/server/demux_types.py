"""Value types of the server demultiplexer (`demux.py`): its inputs, actions and counters.

Kept apart so that the service and the tests can name them without the routing logic, and
so that `demux.py` stays one readable core.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import field
from enum import StrEnum

from trivpn.controlchannel.wrap import ControlWrap
from trivpn.errors import ConfigError
from trivpn.records import dataclass
from trivpn.wire import MAX_PEER_ID

#: A peer address as the socket layer reports it, e.g. ("192.0.2.1", 1194); hashable and
#: with a deterministic repr (it goes into the cookie). Add the listener to the tuple when
#: one demux serves several sockets.
Address = Hashable
#: Builds a fresh server-direction control wrap (empty replay state) whose first send uses
#: the given replay packet-id: 1 for the stateless reply, 2 for the session that follows it.
WrapFactory = Callable[[int], ControlWrap]


class DropReason(StrEnum):
    """Why a datagram went nowhere (counted in `DemuxStats.drops`)."""

    EMPTY = "empty"
    #: from an unknown source and not a permitted first packet (opcode, key id, session id)
    NOT_FIRST_PACKET = "not-first-packet"
    #: RESET_V3 / WKC_V1 to a server without a tls-crypt-v2 key
    TLS_CRYPT_V2 = "tls-crypt-v2-not-configured"
    #: a tls-crypt-v2 server got a first packet without a wrapped client key
    NEEDS_CLIENT_KEY = "needs-client-key"
    #: the wrapped client key (WKc) is short, mis-sized or not sealed by our server key
    BAD_CLIENT_KEY = "bad-client-key"
    #: RESET_V3 without early negotiation (a pre-2.6 client): served as `force-cookie`
    NO_EARLY_NEGOTIATION = "no-early-negotiation"
    UNAUTHENTIC = "unauthentic"
    MALFORMED = "malformed"
    #: a valid reset over the `connect-freq-initial` budget: no answer
    RATE_LIMITED = "rate-limited"
    #: a returning cookie over the `connect-freq` budget of new sessions: no session
    CONNECT_FREQ = "connect-freq"
    #: no echoed session id, or not the cookie for this source in slots -2..+1
    BAD_COOKIE = "bad-cookie"
    #: a cookie-carrying packet with a message id or ACKed id above 1 (deb12u2)
    BAD_MESSAGE_ID = "bad-message-id"
    MAX_CLIENTS = "max-clients"
    #: P_DATA_V2 naming a peer-id that no session holds
    UNKNOWN_PEER_ID = "unknown-peer-id"
    #: a data packet from a source with no session
    NO_SESSION = "no-session"
    #: `stop_accepting` was called (shutdown pending)
    NOT_ACCEPTING = "not-accepting"


@dataclass(frozen=True, slots=True)
class Reply:
    """Send `datagram` to `addr`; the stateless cookie reset (no state was created)."""

    addr: Address
    datagram: bytes


@dataclass(frozen=True, slots=True)
class NewSession:
    """A client proved it got our reset: start its stack (server-role muxer built with
    `PacketMuxer.server_after_cookie(wrap, local_session_id, remote_session_id)`), then
    feed it `first_packet`."""

    session: int  # never reused; the key of `Deliver`, `confirm_float`, `remove_session`
    addr: Address
    peer_id: int
    local_session_id: bytes  # the cookie
    remote_session_id: bytes  # the client's session id
    #: the session's control wrap; its send counter starts after the reply's packet-id 1
    wrap: ControlWrap = field(repr=False)
    first_packet: bytes = field(repr=False)
    #: the session that held `addr` before (a client restarted on the same source port):
    #: already forgotten here, its stack must be stopped
    replaces: int | None = None
    #: tls-crypt-v2: the client's key Kc (256 bytes, mixed into dyn-tls-crypt instead of a
    #: server-wide key) and its wrapped form, which the client appends to retransmissions of
    #: its message 1 (`PacketMuxer.server_after_cookie(..., client_wkc=...)` strips it)
    client_key: bytes | None = field(default=None, repr=False)
    client_wkc: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Deliver:
    """Datagrams for an existing session, in arrival order, all from `addr`."""

    session: int
    addr: Address
    datagrams: list[bytes] = field(repr=False)
    #: `addr` is not the session's address (P_DATA_V2 by peer-id): once the session has
    #: authenticated one of these, it calls `confirm_float(session, addr)`
    float_candidate: bool = False


DemuxAction = Reply | NewSession | Deliver


@dataclass(frozen=True, slots=True)
class DemuxConfig:
    """The server options the demultiplexer obeys (OpenVPN 2.6 defaults)."""

    hand_window: int = 60
    max_clients: int = 1024
    #: `connect-freq-initial N SEC`: at most N answered resets per SEC seconds
    connect_freq_initial: int = 100
    connect_freq_initial_period: float = 10.0
    #: `connect-freq N SEC`: at most N new sessions per SEC seconds; period 0 is off
    connect_freq: int = 0
    connect_freq_period: float = 0.0

    def __post_init__(self) -> None:
        if self.hand_window < 1:
            raise ConfigError("hand-window must be at least 1 second")
        if not 1 <= self.max_clients < MAX_PEER_ID:
            raise ConfigError(f"max-clients must be between 1 and {MAX_PEER_ID - 1}")
        if self.connect_freq_initial < 1 or self.connect_freq_initial_period <= 0:
            raise ConfigError("connect-freq-initial needs a positive count and period")
        if self.connect_freq < 0 or self.connect_freq_period < 0:
            raise ConfigError("connect-freq parms must be >= 0")


@dataclass(slots=True)
class SessionSlots:
    """max-clients of one server, shared by the demultiplexers of all its listeners: the
    limit is the server's (OpenVPN's), so `<listen>` blocks must not multiply it."""

    limit: int
    used: int = 0


@dataclass(slots=True)
class DemuxStats:
    """Counters for status output and tests; nothing here influences routing."""

    resets_answered: int = 0
    sessions_created: int = 0
    sessions_replaced: int = 0
    delivered: int = 0
    float_candidates: int = 0
    floats_confirmed: int = 0
    floats_refused: int = 0
    drops: dict[DropReason, int] = field(default_factory=lambda: dict.fromkeys(DropReason, 0))


class ResetRateLimit:
    """`connect-freq-initial`: a counter per period, O(1) state whatever the traffic.

    A session created from a cookie gives its reset back to the budget, so only resets
    that never return use it up (OpenVPN's `reflect_filter_rate_limit_decrease`)."""

    __slots__ = ("limit", "period", "_start", "_count")

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._start: float | None = None
        self._count = 0

    def allow(self, now: float) -> bool:
        if self._start is None or now >= self._start + self.period or now < self._start:
            self._start = now
            self._count = 0
        if self._count >= self.limit:
            return False
        self._count += 1
        return True

    def credit(self) -> None:
        if self._count:
            self._count -= 1


class ConnectFreq(ResetRateLimit):
    """`connect-freq N SEC`: at most N new sessions (cookies that came back) per window of
    SEC seconds, as OpenVPN's `frequency_limit_event_allowed`; SEC 0 is no limit. The same
    O(1) window counter as `ResetRateLimit` (never credited); shared by the listeners."""

    __slots__ = ()

    def allow(self, now: float) -> bool:
        return not self.period or super().allow(now)
