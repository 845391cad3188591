"""Management set-up: address check, password file, the unix socket file."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import trio


class ManagementConfigError(ValueError):
    """A management set-up the service refuses (one line, for the user)."""


#: a password file's first line may be this long: reading stops there (a wrong path such as
#: /dev/zero or a large binary file must not be read whole)
MAX_PASSWORD_BYTES = 4096


def read_password_file(path: str | Path) -> str:
    """The management password: the file's first line (call before starting the service).
    OSError when it cannot be read; ManagementConfigError (one line) when it is empty, not
    UTF-8 text or its first line is too long."""
    with open(path, "rb") as f:
        data = f.read(MAX_PASSWORD_BYTES + 1)
    first, newline, _ = data.partition(b"\n")
    if not newline and len(data) > MAX_PASSWORD_BYTES:
        raise ManagementConfigError(f"management: password file {path}: the first line is too long")
    try:
        lines = first.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ManagementConfigError(f"management: password file {path} is not UTF-8 text") from None
    if not lines or not lines[0]:
        raise ManagementConfigError(f"management: password file {path} is empty")
    return lines[0]


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def remove_socket_file(path: str) -> None:
    """Remove `path` if it is a unix socket (never another kind of file)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


async def open_unix_listener(path: str) -> trio.SocketListener:
    """Listen on unix socket `path` (mode 0600), replacing a stale socket of an earlier run."""
    remove_socket_file(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        os.chmod(path, 0o600)  # before listen: nobody else can connect in between
        sock.listen(8)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)
