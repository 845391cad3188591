"""`trivpn status SOCKET|HOST:PORT [--json]`: a running instance's figures, read through its
management interface with trivpn's `trivpn-status` command (one JSON line, then END).

Speaks the protocol as any management client does: answers `ENTER PASSWORD:` from
`--password-file` and waits for the verdict (a wrong password is said so, instead of our
commands being taken for more password attempts), skips `>` notification lines, reads the
reply up to `END`. A bad argument (`--timeout`, the port) is a usage error: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, NoReturn

import trio

from trivpn.errors import ConfigError, TrivpnError
from trivpn.management.config import ManagementConfigError, read_password_file

__all__ = ["format_figures", "query_figures", "run_status"]

MAX_REPLY = 4 * 1024 * 1024
PROMPT = b"ENTER PASSWORD:"


class _Closed(TrivpnError):
    """The instance closed the connection (after a password: the password was wrong)."""


def _usage(message: str) -> NoReturn:
    """A wrong argument: one line and exit 2, as argparse's own errors (trivpn.cli._Parser)."""
    print(f"trivpn status: error: {message} (see trivpn status --help)", file=sys.stderr)
    raise SystemExit(2)


def _tcp_address(where: str) -> tuple[str, int] | None:
    """(host, port) when `where` is HOST:PORT, None for a unix socket path."""
    host, sep, port = where.rpartition(":")
    if not (sep and port.isascii() and port.isdigit() and "/" not in where):
        return None
    if not 0 < int(port) < 65536:
        _usage(f"argument SOCKET|HOST:PORT: port {port} is out of range (1-65535)")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _open(where: str) -> trio.abc.Stream:
    address = _tcp_address(where)
    try:
        if address is not None:
            return await trio.open_tcp_stream(*address)
        return await trio.open_unix_socket(where)
    except OSError as exc:
        raise ConfigError(f"cannot reach the management interface at {where}: {exc.strerror or exc}") from None


async def query_figures(where: str, password: str | None = None) -> dict[str, Any]:
    """Ask the instance at `where` for its figures (TrivpnError when it cannot say)."""
    stream = await _open(where)
    async with stream:
        buf = bytearray()

        async def more() -> None:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise _Closed("the management interface closed the connection")
            buf.extend(chunk)
            if len(buf) > MAX_REPLY:
                raise TrivpnError("the management reply is too long")

        while b"\n" not in buf and not buf.endswith(PROMPT):
            await more()
        if buf.startswith(PROMPT):
            if password is None:
                raise ConfigError("the management interface wants a password (--password-file)")
            del buf[: len(PROMPT)]
            await stream.send_all(password.encode() + b"\n")
            await _password_verdict(buf, more)
        await stream.send_all(b"trivpn-status\nquit\n")
        while True:
            for line in bytes(buf).split(b"\r\n"):
                if line.startswith(b"{"):
                    result: dict[str, Any] = json.loads(line)
                    return result
                if line.startswith(b"ERROR:"):
                    raise TrivpnError(f"the instance does not answer trivpn-status: {line.decode(errors='replace')}")
            await more()


async def _password_verdict(buf: bytearray, more: Any) -> None:
    """Wait for `SUCCESS: password is correct` (consumed from `buf`). A wrong password is
    answered with `ERROR: bad password` and/or the prompt again, or the connection is
    closed after the last attempt: any of those is TrivpnError("wrong management password")."""
    while True:
        end = buf.find(b"\n")
        if end >= 0:
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[: end + 1]
            if line.startswith(b"SUCCESS:"):
                return
            if line.startswith((b"ERROR", PROMPT)):
                raise TrivpnError("wrong management password")
            continue  # a notification before the verdict
        if buf.startswith(PROMPT):
            raise TrivpnError("wrong management password")
        try:
            await more()
        except _Closed:
            raise TrivpnError("wrong management password") from None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def format_figures(data: dict[str, Any], now: float) -> str:
    """The human-readable report of a `trivpn-status` answer."""
    lines = [f"{data.get('role', '?')} (pid {data.get('pid', '?')}), state {data.get('state', '?')}"]
    if data.get("role") == "server":
        lines[0] += f", {len(data.get('sessions', []))} client(s)"
    for s in data.get("sessions", []):
        who = f"client {s['common_name'] or '?'} (id {s['client_id']})" if s.get("client_id") is not None else "session"
        addresses = ", ".join(a for a in (s.get("local_ipv4"), s.get("local_ipv6")) if a) or "-"
        drops = {k: v for k, v in s.get("drops", {}).items() if v}
        shake = s.get("last_handshake")
        lines += [
            f"{who}: remote {s['remote']}, tunnel addresses {addresses}",
            f"  cipher {s['cipher'] or '-'}, key id {s['key_id']}, key age {_age(s['key_age'])}, "
            f"renegotiations {s['renegotiations']}",
            f"  in  {s['bytes_in']} bytes {s['packets_in']} packets; "
            f"out {s['bytes_out']} bytes {s['packets_out']} packets",
            "  drops " + (", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"),
            "  last handshake " + (
                "-" if shake is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(shake))
                + f" ({_age(now - shake)} ago)"
            ) + (f", first took {s['handshake_seconds']:.3f} s" if s.get("handshake_seconds") is not None else ""),
        ]
    return "\n".join(lines)


def _password(path: str | None) -> str | None:
    """The --password-file's first line; a file that cannot serve is one line (ConfigError)."""
    if path is None:
        return None
    try:
        return read_password_file(path)
    except OSError as exc:
        raise ConfigError(f"--password-file: cannot read {path}: {exc.strerror or exc}") from None
    except ManagementConfigError as exc:
        raise ConfigError(f"--password-file: {exc}".replace("management: ", "")) from None


async def run_status(args: argparse.Namespace) -> int:
    timeout = args.timeout
    if not (math.isfinite(timeout) and timeout > 0):
        _usage(f"argument --timeout: must be a positive number of seconds, not {timeout:g}")
    _tcp_address(args.where)  # a usage error before anything else
    password = _password(args.password_file)
    with trio.move_on_after(timeout) as scope:
        data = await query_figures(args.where, password)
    if scope.cancelled_caught:
        raise TrivpnError(f"no answer from {args.where} within {timeout:g} s")
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(format_figures(data, time.time()))
    return 0
