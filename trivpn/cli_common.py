"""What every `trivpn` sub-command shares: output flags, logging set-up, help examples.

`finish_parsers` runs once the sub-commands (trivpn.cli's own and the plugins') are
registered: each leaf command gets the flags it is missing (`-v/--verbose`, `-q/--quiet`,
`--log FILE`, `--debug`) and an examples section, so a plugin cannot forget them and the
flags mean the same everywhere. docs/cli.md is the reference for all of it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

#: Logging level per verbosity: -q, default, -v; -vv also shows other libraries' debug logs.
QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG

EXAMPLES: dict[str, str] = {
    "connect": """\
  sudo trivpn connect client.ovpn
  sudo trivpn connect client.ovpn -4 --no-reconnect --log /var/log/trivpn.log
  sudo trivpn connect client.ovpn -vv --debug       # everything, with tracebacks""",
    "ping": """\
  trivpn ping client.ovpn 10.8.0.1                  # no root: the tunnel lives in userspace
  trivpn ping client.ovpn fd00::1 -c 10 -i 0.2 -q   # only the replies and the summary""",
    "serve": """\
  sudo trivpn serve /etc/openvpn/server/server.conf
  trivpn pki init ./pki --name vpn.example.net && sudo trivpn serve ./pki/server.conf -v""",
    "manage": """\
  sudo trivpn manage client.ovpn                    # the tunnel process runs as nobody
  sudo trivpn manage client.ovpn --tunnel-user trivpn --ifname vpn0""",
    "tunnel": """\
  trivpn tunnel --rpc-socket /run/trivpn/manager.sock   # normally started by a manager""",
    "relay": """\
  TRIVPN_TOKEN=$(cat token) trivpn relay --addr :9000 --start-port 10000
  trivpn relay --token-file token --domain tunnels.example.net --http-addr :80""",
    "expose": """\
  TRIVPN_TOKEN=$(cat token) trivpn expose --server relay.example.net:9000 --local 127.0.0.1:3000
  trivpn expose --server 127.0.0.1:9000 --local 127.0.0.1:8000 --token-file token --http --subdomain api""",
    "status": """\
  trivpn status /run/trivpn/mgmt.sock               # a running connect or serve
  trivpn status 127.0.0.1:7505 --json --password-file mgmt.pw""",
    "demo": """\
  sudo trivpn demo
  sudo trivpn demo --iperf-seconds 0 --keep""",
}


class StartupSignals:
    """Signals kept from a daemon's first line of code until its workers manager listens.

    Why: until a handler is set, SIGHUP, SIGUSR1 and SIGUSR2 end the process by their
    default action, and `trivpn serve` sets its own only once its configuration is read
    and its workers manager runs (the `__main__` KeyboardInterrupt catch does the same
    for Ctrl+C during the imports). Installed by `__main__` before the imports; the
    manager takes what was kept (`take`, once its own handlers are in) and acts on it as
    on a signal that came later (`WorkersManager(kept_signals=...)`).
    A Python handler, never SIG_IGN: scripts started meanwhile get the default actions.
    Between two runs of a restarting server SIGINT/SIGTERM are kept too (`also_keep`): a
    stop asked for while the configuration is read again is then a stop, not a death."""

    SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self) -> None:
        self.kept: list[int] = []
        for sig in self.SIGNALS:
            signal.signal(sig, self._keep)

    def _keep(self, signum: int, _frame: object) -> None:
        if signum not in self.kept:  # each kind once: a flood stays bounded
            self.kept.append(signum)

    def also_keep(self, *signals: signal.Signals) -> None:
        """Keep `signals` from now on as well (their previous handlers are not restored)."""
        for sig in signals:
            signal.signal(sig, self._keep)

    def take(self, only: tuple[int, ...] | None = None) -> list[int]:
        """The signals kept so far (those in `only`, when given), in order of arrival; each
        is handed out once, the others stay kept."""
        taken = [s for s in self.kept if only is None or s in only]
        self.kept = [s for s in self.kept if s not in taken]
        return taken


#: set by `__main__` for `trivpn serve` (see StartupSignals)
STARTUP_SIGNALS: StartupSignals | None = None


def keep_startup_signals() -> StartupSignals:
    """Start keeping SIGHUP/SIGUSR1/SIGUSR2 for the workers manager (see StartupSignals)."""
    global STARTUP_SIGNALS
    if STARTUP_SIGNALS is None:
        STARTUP_SIGNALS = StartupSignals()
    return STARTUP_SIGNALS


class LogFormatter(logging.Formatter):
    """`HH:MM:SS message` on a terminal; with `dates`, `YYYY-MM-DD HH:MM:SS message` (--log).

    A record logged with an exception (`log.exception`) names it at the end of its line, so
    that "internal error in ..." says which; the traceback follows only with `tracebacks`
    (`--debug`)."""

    def __init__(self, *, dates: bool = False, tracebacks: bool = False) -> None:
        super().__init__()
        self.stamp = "%Y-%m-%d %H:%M:%S" if dates else "%H:%M:%S"
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime(self.stamp, time.localtime(record.created))
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        line = f"{stamp} {prefix}{record.getMessage()}"
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return line
        text = str(exc).replace("\n", " ")
        line += f" ({type(exc).__name__}{': ' + text if text else ''})"
        if self.tracebacks:
            line += "\n" + self.formatException(record.exc_info).rstrip()  # type: ignore[arg-type]
        return line


def setup_logging(
    verbose: int = 0, quiet: bool = False, log_file: str | None = None, *, tracebacks: bool = False
) -> None:
    """Send trivpn's log to stdout (or append it to `log_file`, mode 0600, dated lines);
    `tracebacks` (`--debug`) adds the traceback of a record logged with an exception.

    Raises OSError when the log file cannot be opened; the caller reports it in one line.
    """
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        handler: logging.Handler = logging.StreamHandler(os.fdopen(fd, "a", buffering=1, encoding="utf-8"))
        handler.setFormatter(LogFormatter(dates=True, tracebacks=tracebacks))
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(LogFormatter(tracebacks=tracebacks))
    level = QUIET if quiet else VERBOSE if verbose > 0 else NORMAL
    ours = logging.getLogger("trivpn")
    ours.handlers[:] = [handler]
    ours.setLevel(level)
    ours.propagate = False
    if verbose >= 2 and not quiet:  # -vv: other libraries' debug lines too
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.DEBUG)


#: glibc's mallopt parameter for the number of malloc arenas
_M_ARENA_MAX = -8


#: the commands whose data paths read the tuning variables below
TUNING_COMMANDS = frozenset({"connect", "ping", "serve", "tunnel"})


def check_tuning_env() -> None:
    """Read the data-path tuning variables (TRIVPN_RX_COALESCE, TRIVPN_DATA_THREADS,
    TRIVPN_TUN_GRO) once at start: a mistyped value is a one-line `ConfigError` before
    anything connects, not a failure (or a silently different layout) later. Each is read
    again where it applies."""
    from trivpn.datachannel.coalesce import default_rx_coalesce
    from trivpn.datachannel.threadrun import data_threads_from_env
    from trivpn.tun.linux import gro_wanted

    default_rx_coalesce()
    data_threads_from_env()
    gro_wanted()


def one_malloc_arena() -> bool:
    """Ask glibc's malloc for one arena for the whole process, before any thread starts.

    Why: glibc gives each new thread that allocates its own arena, and every arena keeps
    the freed packet buffers of its thread. Measured (`bench ab --variant
    trivpn-a1:MALLOC_ARENA_MAX=1`, docs/performance.md "Start-up and RSS"): a connected
    client's peak RSS under load is 0.3–1.0 MB lower with one arena, at the same throughput
    and CPU per GB. The client's threads take turns, so the arena's lock is rarely
    contended. False where the C library has no `mallopt` (musl) or refuses."""
    import ctypes  # already imported by trio (it names its threads through it)

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, 1))


def _leaves(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(path, parser)]
    out: list[tuple[str, argparse.ArgumentParser]] = []
    for action in subs:
        for name, child in action.choices.items():
            if child is not parser:
                out.extend(_leaves(child, f"{path} {name}".strip()))
    return out


def _add_missing_flags(p: argparse.ArgumentParser) -> None:
    have = p._option_string_actions
    if "-v" not in have and "--verbose" not in have:
        p.add_argument("-v", "--verbose", action="count", default=0, help="more detail (-vv: also other libraries)")
    if "-q" not in have and "--quiet" not in have:
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    if "--log" not in have:
        p.add_argument("--log", metavar="FILE", help="append the log to FILE (dated lines) instead of the terminal")
    if "--debug" not in have:
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def finish_parsers(root: argparse.ArgumentParser) -> list[str]:
    """Give every leaf command the shared flags and its examples; returns the leaves' names."""
    names = []
    for name, p in _leaves(root, ""):
        _add_missing_flags(p)
        top = name.split()[0]
        if not p.epilog and top in EXAMPLES:
            p.epilog = "examples:\n" + EXAMPLES[top]
        if p.epilog:
            p.formatter_class = argparse.RawDescriptionHelpFormatter
        names.append(name)
    return names
