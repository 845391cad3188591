"""Keepalive decisions of a data channel: when to ping, when the peer counts as gone.

Theory of operation
-------------------
Three settings, all in seconds and 0 when off (reference: `ping`, `ping-restart`,
`ping-exit`, or `keepalive a b` which sets the first two):

* **ping**: seal a keepalive ping when we have sent nothing for `ping_interval`;
* **ping-restart**: the session is restarted when nothing authentic arrived for that long;
* **ping-exit**: the run ends when nothing authentic arrived for that long (checked first).

The core only sees two instants, handed in: `last_sent` and `last_received`. The data plane
(trio tasks or threads) records them per batch on its own direction objects; the service
copies them in with `observe` before each `get_timer` / `handle_timer`, so the hot path
never calls into this core. A deadline that has moved on since the timer was armed is
simply re-armed: `handle_timer` decides from the instants, not from the wake-up.

Everything is in one clock's seconds (the service's injected clock, see
`datachannel.service`); the core reads none. Installing a key starts the timers (the first
ping is due one interval later) and counts as hearing from the peer: a finished TLS
handshake proves it alive. Once the peer is declared silent the core reports it once and
stops asking to be woken.
"""

from __future__ import annotations

from trivpn.errors import ConfigError
from trivpn.records import dataclass


@dataclass(frozen=True, slots=True)
class SendPing:
    """Seal and send one keepalive ping now."""


@dataclass(frozen=True, slots=True)
class PeerSilent:
    """Nothing authentic arrived for `limit` seconds: ping-exit if `fatal`, else ping-restart."""

    limit: float
    fatal: bool


KeepaliveEvent = SendPing | PeerSilent


class Keepalive:
    """Ping / ping-restart / ping-exit timers of one data channel (pure, no clock)."""

    def __init__(
        self, *, ping_interval: float = 0.0, ping_restart: float = 0.0, ping_exit: float = 0.0
    ) -> None:
        for name, value in (
            ("ping interval", ping_interval),
            ("ping-restart", ping_restart),
            ("ping-exit", ping_exit),
        ):
            if value < 0:
                raise ConfigError(f"{name} must not be negative, got {value:g}")
        self.ping_interval = float(ping_interval)
        self.ping_restart = float(ping_restart)
        self.ping_exit = float(ping_exit)
        self.last_sent = 0.0
        self.last_received = 0.0
        self._keyed = False
        self._ping_due = False
        self._silent: PeerSilent | None = None
        self._reported = False

    def key_installed(self, now: float) -> None:
        """A key was installed at `now`: the timers run from the first one on."""
        if not self._keyed:
            self._keyed = True
            self.last_sent = max(self.last_sent, now)
        self.last_received = max(self.last_received, now)

    def observe(self, *, last_sent: float, last_received: float) -> None:
        """The data plane's latest instants (they only ever move forward)."""
        if last_sent > self.last_sent:
            self.last_sent = last_sent
        if last_received > self.last_received:
            self.last_received = last_received

    def get_timer(self) -> float | None:
        """The earliest deadline, or None (no key yet, everything off, or already silent)."""
        if not self._keyed or self._silent is not None:
            return None
        deadline: float | None = None
        if self.ping_interval > 0:
            deadline = self.last_sent + self.ping_interval
        for limit in (self.ping_restart, self.ping_exit):
            if limit > 0:
                due = self.last_received + limit
                deadline = due if deadline is None else min(deadline, due)
        return deadline

    def handle_timer(self, now: float) -> None:
        """Decide what is due at `now`; the outcome comes out of `events`."""
        if not self._keyed or self._silent is not None:
            return
        silence = now - self.last_received
        if self.ping_exit > 0 and silence >= self.ping_exit:
            self._silent = PeerSilent(self.ping_exit, fatal=True)
        elif self.ping_restart > 0 and silence >= self.ping_restart:
            self._silent = PeerSilent(self.ping_restart, fatal=False)
        elif self.ping_interval > 0 and now >= self.last_sent + self.ping_interval:
            self._ping_due = True
            self.last_sent = now  # the ping counts as sent: one per interval

    def events(self) -> list[KeepaliveEvent]:
        """What is due (at most one ping and one silence report), once."""
        out: list[KeepaliveEvent] = []
        if self._ping_due:
            self._ping_due = False
            out.append(SendPing())
        if self._silent is not None and not self._reported:
            self._reported = True
            out.append(self._silent)
        return out


__all__ = ["Keepalive", "KeepaliveEvent", "PeerSilent", "SendPing"]
