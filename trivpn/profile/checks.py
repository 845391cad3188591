"""Argument checks shared by the option table and the explicit option functions.

Each raises :class:`Invalid` with a message; the parser completes it to the one-line
``line N: option 'X': message`` with :func:`err`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from trivpn.errors import ConfigError

__all__ = [
    "MAX_REFERENCED_FILE_SIZE",
    "Invalid",
    "Unsupported",
    "err",
    "integer",
    "key_direction",
    "nargs",
    "proto_name",
    "read_content",
    "read_limited",
    "static_key",
]

#: We refuse referenced files larger than this (certificates and keys are a few KiB).
MAX_REFERENCED_FILE_SIZE = 1 << 20

_PROTO_NORMAL = {
    "udp": "udp",
    "udp4": "udp4",
    "udp6": "udp6",
    "tcp": "tcp",
    "tcp4": "tcp4",
    "tcp6": "tcp6",
    "tcp-client": "tcp",
    "tcp4-client": "tcp4",
    "tcp6-client": "tcp6",
}
_PROTO_SERVER = frozenset({"tcp-server", "tcp4-server", "tcp6-server"})
_STATIC_KEY = "-----BEGIN OpenVPN Static key V1-----"


class Invalid(Exception):
    """A bad argument; the message is completed with the line and option name."""


class Unsupported(Exception):
    """This value of the option is not supported: warn about ``name`` and ignore it."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def err(line: int, name: str, msg: str) -> ConfigError:
    """The one-line error every option problem becomes."""
    return ConfigError(f"line {line}: option '{name}': {msg}")


# ---- argument checks (all raise Invalid) ----------------------------------------------


def nargs(args: list[str], lo: int, hi: int) -> None:
    if not lo <= len(args) <= hi:
        if lo == hi:
            want = f"exactly {lo} argument{'s' if lo != 1 else ''}"
        else:
            want = f"{lo} to {hi} arguments"
        raise Invalid(f"takes {want}, got {len(args)}")


def integer(value: str, lo: int, hi: int) -> int:
    if not value.isascii() or not value.isdigit():
        raise Invalid(f"{value!r} is not a number")
    n = int(value)
    if not lo <= n <= hi:
        raise Invalid(f"{n} is out of range {lo}..{hi}")
    return n


def proto_name(value: str) -> str:
    """The normalized transport name (``tcp-client`` is ``tcp``); servers' are refused."""
    if value in _PROTO_SERVER:
        raise Invalid(f"{value!r} is for servers; a client uses tcp or udp")
    proto = _PROTO_NORMAL.get(value)
    if proto is None:
        raise Invalid(f"unknown protocol {value!r}")
    return proto


def key_direction(value: str) -> int:
    if value not in ("0", "1"):
        raise Invalid(f"key direction must be 0 or 1, not {value!r}")
    return int(value)


def static_key(text: str) -> str:
    if _STATIC_KEY not in text:
        raise Invalid("no 'OpenVPN Static key V1' found")
    return text


def read_limited(path: Path) -> bytes:
    """Read a regular file of bounded size (never block on a FIFO or device)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(0, "not a regular file")
    with open(path, "rb") as f:
        data = f.read(MAX_REFERENCED_FILE_SIZE + 1)
    if len(data) > MAX_REFERENCED_FILE_SIZE:
        raise OSError(0, f"larger than {MAX_REFERENCED_FILE_SIZE} bytes")
    return data


def read_content(base_dir: Path | None, arg: str, inline: bool) -> str:
    """The body of an inline block, or the text of the file ``arg`` names.

    Relative names are read from ``base_dir`` (the profile's directory), or from the
    current directory when it is None.
    """
    if inline:
        return arg
    path = Path(arg)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        data = read_limited(path)
    except OSError as exc:
        raise Invalid(f"cannot read '{path}': {exc.strerror or exc}") from None
    except ValueError:
        raise Invalid(f"invalid file name {arg!r}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid(f"'{path}' is not a text (PEM) file") from None
