"""SIGHUP and SIGUSR1 restart `trivpn serve` in the same process, as they restart OpenVPN.

Operators send SIGHUP (`systemctl reload`, logrotate's postrotate) expecting OpenVPN's
"SIGHUP[hard,] received, process restarting": serve used to stop for good with exit 0,
which left the server down and did not even wake systemd's Restart=on-failure.

A restart is a whole stop and a whole start, nothing kept across: the clients are told
RESTART (they reconnect at once), the workers manager's cleanups remove the TUN, addresses,
routes and the management socket, and a new `Server` starts. Nothing half-started can stay
behind, because a start that fails is cleaned up by its own manager like the first one.

* SIGHUP reads the configuration file again, and with it everything it names
  (certificates, keys, CRL, ccd entries are read by the new server). If it is no longer
  valid, one line says why and serve exits with status 1, as OpenVPN does ("Options
  error", exit 1): running on with the old configuration would hide the mistake until the
  next start, and a half-applied one is worse.
* SIGUSR1 restarts with the configuration already loaded: OpenVPN's soft restart, which in
  a server with the persist options re-reads nothing either.
* Once `user` made the process give up root it cannot open a TUN or bind a low port again
  (OpenVPN without persist-tun fails the same way: "Cannot open TUN/TAP dev", exit 1; serve
  always makes its TUN anew, persist-tun and persist-key change nothing here).
  Serve then stops gracefully, says why in one line and exits with status 1: a non-zero
  status is what brings a supervisor (systemd's Restart=on-failure) to start it afresh as
  root, which is the restart the operator asked for; exit 0 would leave it down.
* SIGINT/SIGTERM at any time, also during a restart, stop for good (exit 0). A SIGHUP that
  comes while a restart stops the server is part of that restart; those that come once the
  old server is gone (kept by `keeper` for the next one) cause one more restart, never more
  than one per kind.

`after_run` is the decision, pure; `serve_restarting` the thin loop around `Server.run`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trivpn.errors import ConfigError

if TYPE_CHECKING:
    from trivpn.cli_common import StartupSignals
    from trivpn.server.config_model import ServerConfig
    from trivpn.server.service import Server

__all__ = ["CANNOT_RESTART", "Next", "after_run", "restart_notes", "serve_restarting"]

log = logging.getLogger("trivpn.server")

#: exit status when a restart cannot be done (invalid configuration, root given up)
CANNOT_RESTART = 1

STOPS = (signal.SIGINT, signal.SIGTERM)
RESTARTS = (signal.SIGHUP, signal.SIGUSR1)


@dataclass(frozen=True)
class Next:
    """What serve does once a server run has ended."""

    restart: bool
    #: read the configuration file again first (SIGHUP)
    reread: bool = False
    #: the signal that caused the restart, or that could not restart the server
    signal: str | None = None
    #: the exit status when not restarting
    status: int = 0
    #: logged as an error when not restarting
    error: str | None = None


def after_run(signals: Iterable[int], *, root_given_up: str | None = None) -> Next:
    """Decide from the stopping signals of a run (in any order, repeats allowed) and
    whether the process gave up root: a SIGINT/SIGTERM anywhere stops for good, else a
    SIGHUP restarts with the file read again, else a SIGUSR1 with the config kept."""
    seen = set(signals)
    if seen & set(STOPS):
        return Next(restart=False)
    sig = next((s for s in RESTARTS if s in seen), None)
    if sig is None:  # stopped by other means (the API, an end of the run)
        return Next(restart=False)
    if root_given_up is not None:
        return Next(restart=False, signal=sig.name, status=CANNOT_RESTART, error=(
            f"{sig.name} cannot restart the server: it gave up root for {root_given_up} (user/group) and "
            f"can no longer open the TUN or bind the ports; exiting with status {CANNOT_RESTART} so that "
            "a supervisor starts it again as root"
        ))
    return Next(restart=True, reread=sig == signal.SIGHUP, signal=sig.name)


def restart_notes(root_given_up: str | None = None) -> dict[signal.Signals, str]:
    """The line each restart signal logs when it comes ("SIGHUP received, NOTE")."""
    if root_given_up is not None:
        note = f"cannot restart as {root_given_up}: shutting down (exit {CANNOT_RESTART})"
        return dict.fromkeys(RESTARTS, note)
    return {
        signal.SIGHUP: "process restarting (the configuration file is read again)",
        signal.SIGUSR1: "process restarting (with the configuration already loaded)",
    }


async def serve_restarting(
    config: ServerConfig, load: Callable[[], ServerConfig], start: Callable[[ServerConfig], Server],
    keeper: StartupSignals,
) -> int:
    """Run `start(config)` until a run ends in anything but a restart; returns the exit
    status. `load` reads the configuration file again (SIGHUP); `start` builds the Server
    (its kept signals from `keeper`). A configuration no longer valid raises ConfigError
    (one line, exit 1, by the CLI); so does any failure of a restarted server's start."""
    keeper.also_keep(*STOPS)  # between runs too, a stop is a stop (kept for the next manager)
    restarted_by: str | None = None
    while True:
        try:
            server = start(config)
        except ConfigError as exc:
            if restarted_by is None:
                raise
            raise ConfigError(f"cannot restart after {restarted_by}: {exc}") from None
        await server.run()
        signals = [*server.manager.stop_signals, *keeper.take(STOPS + RESTARTS)]
        nxt = after_run(signals, root_given_up=server.privileges.root_given_up)
        stop = next((signal.Signals(s).name for s in signals if s in STOPS), None)
        reason = stop or server.manager.stop_reason or "stopped"  # a SIGTERM during a restart: SIGTERM
        if server.tun_name is None:  # a signal during start-up: nothing was set up
            log.info("stopped (%s) before start-up finished", reason)
        else:
            log.info("stopped (%s); %s removed", reason, server.tun_name)
        if not nxt.restart:
            if nxt.error:
                log.error("%s", nxt.error)
            return nxt.status
        restarted_by = nxt.signal
        if nxt.reread:
            try:
                config = load()
            except ConfigError as exc:
                raise ConfigError(f"cannot restart after {restarted_by}: {exc}") from None
            log.info("%s: restarting with the configuration read again", restarted_by)
        else:
            log.info("%s: restarting with the configuration already loaded", restarted_by)
