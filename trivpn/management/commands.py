"""Typed management commands and the parser that turns lexed parameters into them.

A parse failure is a `CommandError` whose text is the `ERROR: …` reply the real daemon gives
for the same input (observed on Debian's openvpn 2.6.14 where the wording matters to tools).
"""

from __future__ import annotations

import ipaddress
from dataclasses import field
from typing import Literal, TypeAlias

from trivpn.records import dataclass

OnOff: TypeAlias = bool | None  # None: the command did not change the real-time flag
#: how much history to show: a count, "all", or None for none
HistoryCount: TypeAlias = int | Literal["all"] | None
SIGNALS = ("SIGHUP", "SIGTERM", "SIGUSR1", "SIGUSR2")
AUTH_RETRY_MODES = ("none", "interact", "nointeract")


class CommandError(ValueError):
    """A command line the parser refuses; `str(err)` is the reply text after `ERROR: `."""


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Version:
    """`version` shows versions; `version N` records the client's version, with no reply."""

    client_version: int | None = None


@dataclass(frozen=True, slots=True)
class Pid:
    pass


@dataclass(frozen=True, slots=True)
class LoadStats:
    pass


@dataclass(frozen=True, slots=True)
class State:
    """`state [on|off] [N|all]`; a bare `state` shows the latest entry (count 1)."""

    realtime: OnOff
    count: HistoryCount


@dataclass(frozen=True, slots=True)
class Log:
    realtime: OnOff
    count: HistoryCount


@dataclass(frozen=True, slots=True)
class Echo:
    realtime: OnOff
    count: HistoryCount


@dataclass(frozen=True, slots=True)
class Status:
    """`status [1|2|3]`; None: the daemon's configured status version."""

    version: int | None


@dataclass(frozen=True, slots=True)
class ByteCount:
    """`bytecount N`: real-time byte counts every N seconds, 0 turns them off."""

    interval: int


@dataclass(frozen=True, slots=True)
class Signal:
    name: str  # one of SIGNALS


@dataclass(frozen=True, slots=True)
class Hold:
    action: Literal["on", "off", "release", "query"]


@dataclass(frozen=True, slots=True)
class Username:
    kind: str
    value: str


@dataclass(frozen=True, slots=True)
class Password:
    """The value never appears in reprs or logs."""

    kind: str
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class AuthRetry:
    mode: str | None  # None: show the current mode


@dataclass(frozen=True, slots=True)
class Kill:
    """`kill CN` or `kill IP:port`: exactly one of the two is set."""

    common_name: str | None = None
    address: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class ClientKill:
    cid: int
    message: str | None = None  # None: the daemon's default (RESTART)


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """`client-auth CID KID` followed by config lines and `END`."""

    cid: int
    kid: int
    lines: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientAuthNt:
    cid: int
    kid: int


@dataclass(frozen=True, slots=True)
class ClientDeny:
    cid: int
    kid: int
    reason: str
    client_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Figures:
    """`trivpn-status`: trivpn's own addition, every session's figures as one JSON line
    (what `trivpn status` reads; OpenVPN answers it as an unknown command)."""


Command: TypeAlias = (
    Help | Version | Pid | LoadStats | State | Log | Echo | Status | ByteCount | Signal | Hold
    | Username | Password | AuthRetry | Kill | ClientKill | ClientAuth | ClientAuthNt
    | ClientDeny | Quit | Figures
)
#: commands only a server answers; a client replies "not supported by the current daemon mode"
SERVER_ONLY: dict[type, str] = {
    Kill: "kill", ClientKill: "client-kill", ClientAuth: "client-auth",
    ClientAuthNt: "client-auth", ClientDeny: "client-deny",
}


_HOLD_ACTIONS: dict[str, Literal["on", "off", "release"]] = {
    "on": "on", "off": "off", "release": "release",
}


class UnknownCommand(CommandError):
    def __init__(self) -> None:
        super().__init__("unknown command, enter 'help' for more options")


def _need(name: str, args: list[str], count: int, at_least: bool = False) -> None:
    if len(args) < count:
        plural = "parameter" if count == 1 else "parameters"
        qualifier = "at least " if at_least else ""
        raise CommandError(f"the '{name}' command requires {qualifier}{count} {plural}")


def _number(text: str, what: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise CommandError(f"cannot parse {what}")
    return int(text)


def _atoi(text: str) -> int:
    """C's atoi, which the daemon uses here: leading digits, else 0 (`bytecount x` is off)."""
    sign, digits = (-1, text[1:]) if text.startswith("-") else (1, text)
    prefix = ""
    for ch in digits[:9]:
        if not ("0" <= ch <= "9"):
            break
        prefix += ch
    return sign * int(prefix) if prefix else 0


def _history(name: str, args: list[str], bare_count: HistoryCount) -> tuple[OnOff, HistoryCount]:
    """Arguments of state/log/echo: `[on|off] [N|all]` in either one or two parameters."""
    realtime: OnOff = None
    count: HistoryCount = bare_count if not args else None
    bad = CommandError(f"{name} parameter must be 'on' or 'off' or some number n or 'all'")
    for index, arg in enumerate(args[:2]):
        if arg in ("on", "off") and index == 0:
            realtime = arg == "on"
        elif arg == "all":
            count = "all"
        elif arg.isascii() and arg.isdigit() and len(arg) <= 9:
            count = int(arg)
        else:
            raise bad
    return realtime, count


def _cid_kid(name: str, args: list[str], count: int = 2) -> tuple[int, int]:
    _need(name, args, count)
    return _number(args[0], "CID"), _number(args[1], "KID")


def _kill_target(target: str) -> Kill:
    host, sep, port = target.rpartition(":")
    if sep and port.isascii() and port.isdigit() and len(port) <= 5:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            pass
        else:
            return Kill(address=(str(ip), int(port)))
    return Kill(common_name=target)


def parse_command(params: list[str]) -> Command:
    """Turn lexed parameters (at least one) into a Command; ClientAuth comes without lines."""
    name, args = params[0], params[1:]
    if name == "help":
        return Help()
    if name == "trivpn-status":
        return Figures()
    if name == "version":
        return Version(_atoi(args[0]) if args else None)
    if name == "pid":
        return Pid()
    if name == "load-stats":
        return LoadStats()
    if name in ("quit", "exit"):
        return Quit()
    if name == "state":
        return State(*_history(name, args, 1))
    if name in ("log", "echo"):
        _need(name, args, 1, at_least=True)
        realtime, count = _history(name, args, None)
        return Log(realtime, count) if name == "log" else Echo(realtime, count)
    if name == "status":
        if not args:
            return Status(None)
        if args[0] not in ("1", "2", "3"):
            raise CommandError("status version must be 1, 2 or 3")
        return Status(int(args[0]))
    if name == "bytecount":
        _need(name, args, 1)
        return ByteCount(max(_atoi(args[0]), 0))
    if name == "signal":
        _need(name, args, 1)
        if args[0] not in SIGNALS:
            raise CommandError(f"signal '{args[0]}' is not a known signal type")
        return Signal(args[0])
    if name == "hold":
        if not args:
            return Hold("query")
        action = _HOLD_ACTIONS.get(args[0])
        if action is None:
            raise CommandError("bad hold command parameter")
        return Hold(action)
    if name in ("username", "password"):
        _need(name, args, 2)
        return Username(args[0], args[1]) if name == "username" else Password(args[0], args[1])
    if name == "auth-retry":
        if not args:
            return AuthRetry(None)
        if args[0] not in AUTH_RETRY_MODES:
            raise CommandError("bad auth-retry parameter")
        return AuthRetry(args[0])
    if name == "kill":
        _need(name, args, 1)
        return _kill_target(args[0])
    if name == "client-kill":
        _need(name, args, 1)
        return ClientKill(_number(args[0], "CID"), args[1] if len(args) > 1 else None)
    if name == "client-auth":
        return ClientAuth(*_cid_kid(name, args))
    if name == "client-auth-nt":
        return ClientAuthNt(*_cid_kid(name, args))
    if name == "client-deny":
        cid, kid = _cid_kid(name, args, 3)
        return ClientDeny(cid, kid, args[2], args[3] if len(args) > 3 else None)
    raise UnknownCommand()
