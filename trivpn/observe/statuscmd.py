"""`trivpn status SOCKET|HOST:PORT [--json]`: a running instance's figures, read through its
management interface with trivpn's `trivpn-status` command (one JSON line, then END).

Speaks the protocol as any management client does: answers `ENTER PASSWORD:` from
`--password-file`, skips `>` notification lines, reads the reply up to `END`.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import trio

from trivpn.errors import ConfigError, TrivpnError
from trivpn.management.config import read_password_file

__all__ = ["format_figures", "query_figures", "run_status"]

MAX_REPLY = 4 * 1024 * 1024


async def _open(where: str) -> trio.abc.Stream:
    host, sep, port = where.rpartition(":")
    try:
        if sep and port.isascii() and port.isdigit() and "/" not in where:
            return await trio.open_tcp_stream(host.strip("[]") or "127.0.0.1", int(port))
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
                raise TrivpnError("the management interface closed the connection")
            buf.extend(chunk)
            if len(buf) > MAX_REPLY:
                raise TrivpnError("the management reply is too long")

        while b"\n" not in buf and not buf.endswith(b"ENTER PASSWORD:"):
            await more()
        if buf.startswith(b"ENTER PASSWORD:"):
            if password is None:
                raise ConfigError("the management interface wants a password (--password-file)")
            await stream.send_all(password.encode() + b"\n")
        await stream.send_all(b"trivpn-status\nquit\n")
        while True:
            for line in bytes(buf).split(b"\r\n"):
                if line.startswith(b"{"):
                    result: dict[str, Any] = json.loads(line)
                    return result
                if line.startswith(b"ERROR:"):
                    raise TrivpnError(f"the instance does not answer trivpn-status: {line.decode(errors='replace')}")
            await more()


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


async def run_status(args: argparse.Namespace) -> int:
    password = read_password_file(args.password_file) if args.password_file else None
    with trio.move_on_after(args.timeout):
        data = await query_figures(args.where, password)
        break_ = False
    if "data" not in locals():
        raise TrivpnError(f"no answer from {args.where} within {args.timeout:g} s")
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(format_figures(data, time.time()))
    return 0
