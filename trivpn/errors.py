"""Error hierarchy shared by every layer.

Two directions, as in h11/h2: a *local* error means our own caller misused a core
(a bug, or a wrong option); a *remote* error means the peer sent something we refuse.
Remote errors on a single packet are never fatal: the layer drops the packet and counts it.
"""

from __future__ import annotations


class TrivpnError(Exception):
    """Base of every error trivpn raises on purpose."""


class ProtocolError(TrivpnError):
    """A protocol rule was broken (see the two subclasses for who broke it)."""


class LocalProtocolError(ProtocolError):
    """Our side misused a sans-IO core (wrong state, oversized message, ...)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes we refuse: malformed, forged, replayed or out of state."""


class ConfigError(TrivpnError):
    """A profile, option or pushed setting is unusable; the message is one line for the user."""


class FatalError(TrivpnError):
    """The session cannot continue (certificate rejected, AUTH_FAILED, HALT, ...)."""


class SessionRestart(TrivpnError):
    """The session ended in a way a reconnect may fix (ping-restart, server RESTART, lost
    transport, handshake timeout). The client reconnects unless told not to; `advance`
    asks for the next remote rather than the same one (server `RESTART,[N]`)."""

    advance: bool = False


# -- errors typed by cause ------------------------------------------------------------------
# Each is a subclass of the disposition it has always had (FatalError, SessionRestart), so an
# `except FatalError` written before these existed still catches them.


class AuthFailed(FatalError):
    """The server refused our credentials (AUTH_FAILED without TEMP): fix them, then retry."""


class Halted(FatalError):
    """The server told us to stop and not come back (HALT)."""


class CertificateRejected(FatalError):
    """A certificate was refused: the peer's by our verification, or ours by the peer (a
    TLS alert). A client retries this by default (the path can forge an alert, see
    docs/security.md); it surfaces as `CertificateRestart` only when it ends the run."""


class CertificateRestart(SessionRestart, CertificateRejected):
    """A session ended over a refused certificate and the client treats it as a restart;
    still an instance of `CertificateRejected` so one `except` catches both flavours."""


class RetryLimitReached(FatalError):
    """The client gave up reconnecting (connect-retry-max, resolv-retry); `__cause__` is the
    last attempt's error, when there was one."""


class ConnectTimeout(RetryLimitReached):
    """No tunnel came up within the time allowed (`connect_timeout`, i.e. give-up-after)."""
