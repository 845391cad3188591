"""Control-message policy: what a control string from the peer means for the session.

Pure functions from the text to a verdict; the key schedule turns verdicts into events.
Client side (reference openvpn-protocol.md §5): AUTH_FAILED (TEMP → retry later, SESSION →
the auth-token expired, anything else → give up), HALT (give up), RESTART[,[flags]msg]
(reconnect; flag N = next remote), EXIT (the server left), INFO/INFO_PRE/AUTH_PENDING (logged;
AUTH_PENDING extends the wait). Server side: EXIT (the client left); PUSH_REQUEST never gets
here (the TLS core reports it as PushRequestReceived). INFO lines are the peer's to send as
often as it likes (many fit in one TLS record), so `InfoLogBudget` bounds their log lines
per session.
"""

from __future__ import annotations

from trivpn.errors import AuthFailed, FatalError, Halted
from trivpn.messages import AuthPending
from trivpn.records import dataclass

#: The longest AUTH_PENDING timeout we honour (seconds).
MAX_AUTH_PENDING = 3600
#: INFO messages logged per session and window; the rest are counted, and the count is
#: logged once the window has passed.
INFO_LOG_LINES = 10
INFO_LOG_WINDOW = 60.0


class InfoLogBudget:
    """At most `lines` log lines per `window` seconds for one peer's INFO messages (pure:
    time comes in as `now`); `due` hands over the count of the others once that window is
    over, for one summary line."""

    __slots__ = ("lines", "window", "suppressed", "_start", "_used")

    def __init__(self, lines: int = INFO_LOG_LINES, window: float = INFO_LOG_WINDOW) -> None:
        self.lines = lines
        self.window = window
        self.suppressed = 0
        self._start = float("-inf")
        self._used = 0

    def allow(self, now: float) -> bool:
        if now >= self._start + self.window or now < self._start:
            self._start, self._used = now, 0
        if self._used < self.lines:
            self._used += 1
            return True
        self.suppressed += 1
        return False

    def due(self, now: float) -> int:
        """The count suppressed in a window that is over (then 0 again), else 0."""
        if not self.suppressed or self._start <= now < self._start + self.window:
            return 0
        n, self.suppressed = self.suppressed, 0
        return n

    def deadline(self) -> float | None:
        """When `due` will hand over a count (for the owner's timer), if any."""
        return self._start + self.window if self.suppressed else None


@dataclass(frozen=True, slots=True)
class Restart:
    """The session ends; a reconnect may fix it. `advance`: try the next remote (RESTART,[N]);
    `auth_token_expired`: reconnect with the real credentials, not the pushed auth-token."""

    reason: str
    advance: bool = False
    auth_token_expired: bool = False
    #: a refused certificate caused it (raised as `CertificateRestart`)
    certificate: bool = False


@dataclass(frozen=True, slots=True)
class Fatal:
    """The session ends and retrying cannot help (AUTH_FAILED, HALT, certificate refused)."""

    reason: str
    #: the error the service raises: typed by cause (AuthFailed, Halted, CertificateRejected)
    error: type[FatalError] = FatalError


@dataclass(frozen=True, slots=True)
class Info:
    """A message to log and otherwise ignore (INFO, INFO_PRE, AUTH_PENDING's text)."""

    text: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A message this role does not act on (counted, logged at debug level)."""

    text: str


Verdict = Restart | Fatal | Info | AuthPending | Unknown


def auth_pending_timeout(text: str, default: float = 60.0) -> float:
    """`AUTH_PENDING,timeout 120` → 120 (OpenVPN's keyword list); default otherwise."""
    for part in text.split(",")[1:]:
        words = part.split()
        if len(words) == 2 and words[0] == "timeout" and words[1].isascii() and words[1].isdigit():
            return float(min(int(words[1]), MAX_AUTH_PENDING))
    return default


def client_verdict(text: str, *, pushed: bool) -> Verdict:
    """What a control message from the server means; `pushed`: a PUSH_REPLY was applied in
    this session (only then can AUTH_FAILED,SESSION be an expired auth-token)."""
    head = text.split(",", 1)[0]
    if head == "AUTH_FAILED":
        reason = text[len("AUTH_FAILED") :].lstrip(",")
        if reason.startswith("TEMP"):
            return Restart(f"the server refused authentication for now: {reason}")
        if reason.startswith("SESSION") and pushed:
            return Restart(f"the server's auth-token expired: {reason}", auth_token_expired=True)
        return Fatal("the server refused authentication (AUTH_FAILED" + (f": {reason})" if reason else ")"), AuthFailed)
    if head == "HALT":
        return Fatal(f"the server halted the session: {text}", Halted)
    if head == "RESTART":
        # RESTART,[flags]message: N = go on to the next remote (P = keep credentials)
        flags = text[len("RESTART,") :].partition("]")[0] if text.startswith("RESTART,[") else ""
        return Restart(f"the server asked for a restart: {text}", advance="N" in flags)
    if head == "EXIT":
        return Restart("the server closed the session (EXIT)")
    if head == "AUTH_PENDING":
        return AuthPending(auth_pending_timeout(text))
    if head in ("INFO", "INFO_PRE"):
        return Info(text)
    return Unknown(text)


def server_verdict(text: str) -> Verdict:
    """What a control message from a client means (EXIT: it leaves; nothing else acts)."""
    if text.split(",", 1)[0] == "EXIT":
        return Restart("the client closed the session (EXIT)")
    if text.startswith("INFO"):
        return Info(text)
    return Unknown(text)
