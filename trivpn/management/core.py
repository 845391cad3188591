"""Sans-IO core of one management connection (OpenVPN's management protocol, version 5).

Theory of operation
-------------------
Bytes from the client go in through `receive_data(data, now)`; replies and notifications come
out of `data_to_send()`. The core owns only per-connection state: whether the password was
given, which real-time notifications the client enabled, its bytecount interval and timer,
and a pending multi-line `client-auth` block. Everything the daemon knows (state history,
status text, counters, what `signal` or `kill` does) it asks the `ManagementHost`, so the
core does no I/O and reads no clock.

Connecting: with a password the core sends `ENTER PASSWORD:` (no line ending) and treats each
line as an attempt; a wrong one gets the prompt again (the daemon shows no error text before
authentication), the third wrong one closes. Then the `>INFO:` banner, `>HOLD:` when the
daemon is holding, and any query still unanswered (`>PASSWORD:`).

Commands: lines end at LF, a trailing CR is dropped, parameters are split by `lexer`, turned
into typed commands by `commands`, answered through the host, and also returned to the
caller (which acts on `Quit`, for instance). A bad line is an `ERROR:` reply, never a
dropped connection.

Limits (a hostile client cannot grow memory):
- a line is at most MAX_LINE_BYTES; a longer one is discarded up to its LF with one ERROR;
- at most MAX_INPUT_BYTES may be buffered: the caller feeds more only while `wants_data`;
- commands are processed only while fewer than OUTPUT_HIGH_WATER reply bytes wait in the
  outbox, the rest of the input waits until the caller drains `data_to_send()`;
- a client-auth block holds at most MAX_BLOCK_LINES lines / MAX_BLOCK_BYTES bytes.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Literal, Protocol

from trivpn.management import commands as c
from trivpn.management import formats as f
from trivpn.management.lexer import LexError, split_line
from trivpn.records import dataclass

MAX_LINE_BYTES = 2048
MAX_INPUT_BYTES = 8192
OUTPUT_HIGH_WATER = 64 * 1024
MAX_BLOCK_LINES = 256
MAX_BLOCK_BYTES = 32 * 1024
MAX_PASSWORD_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Reply:
    """A host's answer to a command: `SUCCESS: text` or `ERROR: text`."""

    ok: bool
    text: str

    @classmethod
    def success(cls, text: str) -> Reply:
        return cls(True, text)

    @classmethod
    def error(cls, text: str) -> Reply:
        return cls(False, text)


@dataclass(frozen=True, slots=True)
class ByteCounts:
    """Counters for `>BYTECOUNT:`; `clients` (cid, in, out) is set on a server."""

    bytes_in: int
    bytes_out: int
    clients: Sequence[tuple[int, int, int]] | None = None


class ManagementHost(Protocol):
    """What the daemon (client or server) answers; called synchronously by the core."""

    @property
    def is_server(self) -> bool: ...

    def version_title(self) -> str:
        """The text after `OpenVPN Version: `; tools parse its 2nd word as X.Y.Z."""
        ...

    def pid(self) -> int: ...

    def state_history(self) -> Sequence[f.StateRecord]: ...

    def log_history(self) -> Sequence[f.LogRecord]: ...

    def echo_history(self) -> Sequence[f.LogRecord]: ...

    def status_lines(self, version: int | None) -> Sequence[str] | None:
        """Status text (without END) in `version` (None: the configured one); None if none."""
        ...

    def bytecounts(self) -> ByteCounts: ...

    def figures_json(self) -> str:
        """`trivpn-status`: the instance's figures as one line of JSON."""
        ...

    def hold_waiting(self) -> int | None:
        """The `>HOLD:` figure while the daemon waits for `hold release`, else None."""
        ...

    def pending_queries(self) -> Sequence[str]:
        """Real-time lines still waiting for an answer (`>PASSWORD:Need ...`), repeated to
        every client that connects, like `>HOLD:`."""
        ...

    def perform(self, command: c.Command) -> Reply | None:
        """Act on a signal/hold/username/password/auth-retry/kill/client-*/load-stats command.

        None means "done" with the standard success wording (`STANDARD_SUCCESS`); commands
        without one (hold query, auth-retry query, kill, load-stats) must return a Reply.
        """
        ...


def _standard_success(command: c.Command) -> str | None:
    match command:
        case c.Signal(name):
            return f"signal {name} thrown"
        case c.Hold("on") | c.Hold("off"):
            return f"hold flag set to {command.action.upper()}"
        case c.Hold("release"):
            return "hold release succeeded"
        case c.Username(kind, _):
            return f"'{kind}' username entered, but not yet verified"
        case c.Password(kind, _):
            return f"'{kind}' password entered, but not yet verified"
        case c.AuthRetry(mode) if mode is not None:
            return "auth-retry parameter changed"
        case c.ClientKill():
            return "client-kill command succeeded"
        case c.ClientAuth() | c.ClientAuthNt():
            return "client-auth command succeeded"
        case c.ClientDeny():
            return "client-deny command succeeded"
    return None


@dataclass(frozen=True, slots=True)
class Notification:
    """A real-time line (or ENV block) for every connection that wants its kind."""

    kind: Literal["state", "log", "echo", "always"]
    lines: tuple[str, ...]

    @classmethod
    def state(cls, record: f.StateRecord) -> Notification:
        return cls("state", (f.state_notification(record),))

    @classmethod
    def log(cls, record: f.LogRecord) -> Notification:
        return cls("log", (f.log_notification(record),))

    @classmethod
    def echo(cls, record: f.LogRecord) -> Notification:
        return cls("echo", (f.echo_notification(record),))

    @classmethod
    def always(cls, *lines: str) -> Notification:
        """HOLD, PASSWORD, FATAL and CLIENT lines go to every authenticated connection."""
        return cls("always", tuple(lines))

    def __repr__(self) -> str:  # ENV blocks may carry a client's password: show no lines
        return f"Notification({self.kind!r}, {len(self.lines)} lines)"


class ManagementConnection:
    """Protocol state of one management client; see the module docstring."""

    def __init__(self, host: ManagementHost, *, password: str | None = None) -> None:
        self._host = host
        self._password = password.encode() if password is not None else None
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._discarding = False
        self._block: c.ClientAuth | None = None
        self._block_lines: list[str] = []
        self._block_bytes = 0
        self._block_overflow = False
        self._failed_passwords = 0
        self._realtime = {"state": False, "log": False, "echo": False, "always": True}
        self._bytecount_interval = 0
        self._bytecount_due: float | None = None
        self.authenticated = password is None
        #: set when the connection should end (quit, too many bad passwords)
        self.closed = False
        if self._password is not None:
            self._outbuf += f.PASSWORD_PROMPT
        else:
            self._greet()

    def __repr__(self) -> str:
        return f"<ManagementConnection authenticated={self.authenticated} closed={self.closed}>"

    @property
    def wants_data(self) -> bool:
        """Whether the caller should read more input now.

        False while complete lines wait (held back by the output limit: drain
        `data_to_send()` and call `receive_data(b"", now)`) or the connection is closed.
        """
        return (
            not self.closed
            and b"\n" not in self._inbuf
            and len(self._inbuf) < MAX_INPUT_BYTES - MAX_LINE_BYTES
            and len(self._outbuf) < OUTPUT_HIGH_WATER
        )

    def receive_data(self, data: bytes, now: float) -> list[c.Command]:
        """Take bytes from the client; answer complete lines; return the commands accepted.

        Call with b"" after draining `data_to_send()` to resume lines held back by the
        output limit.
        """
        if self.closed:
            return []
        if len(self._inbuf) + len(data) > MAX_INPUT_BYTES:
            raise ValueError("management input fed beyond MAX_INPUT_BYTES (check wants_data)")
        self._inbuf += data
        accepted: list[c.Command] = []
        while not self.closed and len(self._outbuf) < OUTPUT_HIGH_WATER:
            end = self._inbuf.find(b"\n")
            if end < 0:
                if len(self._inbuf) > MAX_LINE_BYTES:
                    self._inbuf.clear()
                    if not self._discarding:
                        self._discarding = True
                        self._line_too_long()
                elif self._discarding:
                    self._inbuf.clear()
                break
            raw = bytes(self._inbuf[:end])
            del self._inbuf[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(raw) > MAX_LINE_BYTES:
                self._line_too_long()
                continue
            command = self._line(raw.removesuffix(b"\r"), now)
            if command is not None:
                accepted.append(command)
        return accepted

    def data_to_send(self) -> bytes:
        out = bytes(self._outbuf)
        self._outbuf.clear()
        return out

    def notify(self, notification: Notification) -> None:
        """Queue a real-time notification if this client enabled its kind."""
        if self.authenticated and not self.closed and self._realtime[notification.kind]:
            self._send(*notification.lines)

    def get_timer(self) -> float | None:
        """When the next `>BYTECOUNT:` is due (None: bytecount is off)."""
        return self._bytecount_due if self.authenticated and not self.closed else None

    def handle_timer(self, now: float) -> None:
        due = self._bytecount_due
        if due is None or now < due or not self.authenticated or self.closed:
            return
        self._send_bytecounts()
        self._bytecount_due = max(due + self._bytecount_interval, now)

    # -- internals ---------------------------------------------------------------------

    def _send(self, *lines: str) -> None:
        self._outbuf += f.encode_lines(lines)

    def _greet(self) -> None:
        self._send(f.BANNER)
        waiting = self._host.hold_waiting()
        if waiting is not None:
            self._send(f.hold(waiting))
        self._send(*self._host.pending_queries())

    def _line_too_long(self) -> None:
        if self.authenticated:
            self._send(f"ERROR: command line too long ({MAX_LINE_BYTES} bytes max)")

    def _line(self, raw: bytes, now: float) -> c.Command | None:
        if not self.authenticated:
            self._password_attempt(raw)
            return None
        text = raw.decode("utf-8", "replace")
        if self._block is not None:
            return self._block_line(text)
        try:
            params = split_line(text)
            if not params:
                return None
            command = c.parse_command(params)
        except (LexError, c.CommandError) as err:
            self._send(f"ERROR: {err}")
            return None
        if isinstance(command, c.ClientAuth):
            self._block = command
            self._block_lines, self._block_bytes, self._block_overflow = [], 0, False
            return None
        return self._answer(command, now)

    def _password_attempt(self, raw: bytes) -> None:
        assert self._password is not None
        if hmac.compare_digest(raw, self._password):
            self.authenticated = True
            self._send(f.PASSWORD_OK)
            self._greet()
            return
        self._failed_passwords += 1
        if self._failed_passwords >= MAX_PASSWORD_ATTEMPTS:
            self.closed = True
        else:
            self._outbuf += f.PASSWORD_PROMPT

    def _block_line(self, text: str) -> c.Command | None:
        assert self._block is not None
        if text != "END":
            self._block_bytes += len(text)
            if len(self._block_lines) >= MAX_BLOCK_LINES or self._block_bytes > MAX_BLOCK_BYTES:
                self._block_overflow = True
            else:
                self._block_lines.append(text)
            return None
        block, self._block = self._block, None
        if self._block_overflow:
            self._send(
                f"ERROR: client-auth block too long ({MAX_BLOCK_LINES} lines, "
                f"{MAX_BLOCK_BYTES} bytes max)"
            )
            return None
        return self._answer(
            c.ClientAuth(block.cid, block.kid, tuple(self._block_lines)), now=None
        )

    def _answer(self, command: c.Command, now: float | None) -> c.Command:
        host = self._host
        server_only = c.SERVER_ONLY.get(type(command))
        if server_only is not None and not host.is_server:
            self._send(
                f"ERROR: The '{server_only}' command is not supported by the current daemon mode"
            )
            return command
        match command:
            case c.Help():
                self._send(*_HELP, "END")
            case c.Version(client_version) if client_version is not None:
                pass  # observed: `version 3` gets no reply
            case c.Version():
                self._send(
                    f"OpenVPN Version: {host.version_title()}",
                    f"Management Version: {f.MANAGEMENT_VERSION}",
                    "END",
                )
            case c.Pid():
                self._send(f"SUCCESS: pid={host.pid()}")
            case c.State() | c.Log() | c.Echo():
                self._history(command)
            case c.Status(version):
                lines = host.status_lines(version)
                if lines is None:
                    self._send(
                        "ERROR: The 'status' command is not supported by the current daemon mode"
                    )
                else:
                    self._send(*lines, "END")
            case c.ByteCount(interval):
                self._bytecount_interval = interval
                self._bytecount_due = None
                if interval > 0 and now is not None:
                    self._bytecount_due = now + interval
                self._send("SUCCESS: bytecount interval changed")
            case c.Quit():
                self.closed = True
            case c.Figures():
                self._send(host.figures_json(), "END")
            case _:
                reply = host.perform(command)
                if reply is None:
                    standard = _standard_success(command)
                    reply = Reply.success(standard or "command succeeded")
                self._send(("SUCCESS: " if reply.ok else "ERROR: ") + reply.text)
        return command

    def _history(self, command: c.State | c.Log | c.Echo) -> None:
        kind: Literal["state", "log", "echo"]
        lines: list[str]
        if isinstance(command, c.State):
            kind, lines = "state", [r.line() for r in self._host.state_history()]
        elif isinstance(command, c.Log):
            kind, lines = "log", [r.line() for r in self._host.log_history()]
        else:
            kind, lines = "echo", [r.echo_line() for r in self._host.echo_history()]
        if command.realtime is not None:
            self._realtime[kind] = command.realtime
            flag = "ON" if command.realtime else "OFF"
            self._send(f"SUCCESS: real-time {kind} notification set to {flag}")
        if command.count is None:
            return
        if command.count != "all":
            lines = lines[-command.count :] if command.count else []
        self._send(*lines, "END")

    def _send_bytecounts(self) -> None:
        counts = self._host.bytecounts()
        if counts.clients is None:
            self._send(f.bytecount(counts.bytes_in, counts.bytes_out))
        else:
            self._send(*(f.bytecount_cli(cid, i, o) for cid, i, o in counts.clients))


# our own wording; tools do not parse `help`, they only read up to END
_HELP = (
    "Management interface of trivpn (OpenVPN management protocol version 5)",
    "Commands:",
    "auth-retry [none|interact|nointeract] : show or set the auth failure retry mode",
    "bytecount n             : real-time byte counts every n seconds (0 = off)",
    "client-auth CID KID     : accept a client; config lines follow, then END",
    "client-auth-nt CID KID  : accept a client without config lines",
    "client-deny CID KID R [CR] : refuse a client (log reason R, client reason CR)",
    "client-kill CID [M]     : end a client's session with message M (default RESTART)",
    "echo [on|off] [N|all]   : echo buffer, like log",
    "exit | quit             : close this management session",
    "help                    : this list",
    "hold [on|off|release]   : show or set the hold flag, or release a hold",
    "kill CN | kill IP:port  : end the sessions of a common name or an address",
    "load-stats              : server load figures",
    "log [on|off] [N|all]    : real-time log on/off, and the last N or all lines",
    "password type p         : answer a password query",
    "pid                     : process id",
    "signal s                : SIGHUP, SIGTERM, SIGUSR1 or SIGUSR2",
    "state [on|off] [N|all]  : real-time state on/off, and state history",
    "status [n]              : status in format n (1, 2 or 3)",
    "trivpn-status           : every session's figures as one JSON line (trivpn only)",
    "username type u         : answer a username query",
    "version                 : daemon and management versions",
)
