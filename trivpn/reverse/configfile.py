"""TOML configuration files for `trivpn relay --config F` and `trivpn expose --config F`.

Theory of operation
-------------------
A file holds the same settings as the command line, spelt as TOML keys (the long option
without `--`, with `_` for `-`: `start_port`, `tls_ca`; negated flags read positively:
`http_log = false`, `reconnect = false`), plus what a command line cannot say well:
per-client tokens with their port quota and bandwidth (`[[clients]]`, relay), several
tunnels over one connection (`[[tunnels]]`, expose), and the tunables (`[limits]`).

Reading never half-works: every key is checked for its type and range, unknown keys are
refused (a typo must not silently fall back to a default), and the first problem becomes
one `ConfigError` line naming the file, the line when it can be found, the key, and what
is wrong. The loader returns plain values keyed like the argparse destinations; cli.py
merges them under the flags actually given (flags win) and over the defaults.

The file may hold secrets (tokens), so error messages name keys, never token values.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import field
from typing import Any

from trivpn.errors import ConfigError
from trivpn.records import dataclass
from trivpn.reverse.bindings import check_label
from trivpn.reverse.bucket import parse_rate
from trivpn.reverse.http.names import MAX_NAME_QUOTA
from trivpn.reverse.sockets import parse_hostport

MIN_TOKEN = 16
MAX_FILE = 1 << 20  # a configuration file is small; refuse to parse a huge one
#: a token file holds one token, a tokens file a line per client (1,000 clients fit):
#: a larger one is the wrong file, and /dev/zero must not be read forever
MAX_TOKEN_FILE = 64 * 1024
_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.-]+)\s*\]\]?")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")

#: relay: key -> argparse destination (same name unless listed in _RENAMED)
RELAY_KEYS = (
    "addr start_port end_port public_host token token_file tokens_file tls_cert tls_key "
    "metrics_addr lease idle_lease heartbeat port_quota name_quota bandwidth window max_frame "
    "http_log verbose debug domain http_addr https_addr relay_buffer log_query"
).split()
EXPOSE_KEYS = (
    "server local remote_port token token_file tls tls_ca tls_server_name reconnect "
    "max_attempts window max_frame http_log verbose debug http https subdomain inspect "
    "log_query"
).split()
GUARD_LIMITS = ("max_pre_auth", "max_pre_auth_per_source", "max_failures", "failure_window")
SESSION_LIMITS = (
    "session_buffer",
    "max_streams",
    "control_buffer",
    "send_buffer",
    "handshake_timeout",
    "linger",
    "stall_timeout",
)


@dataclass(slots=True)
class ClientEntry:
    name: str
    token: bytes
    port_quota: int | None = None
    bandwidth: float | None = None


@dataclass(slots=True)
class TunnelEntry:
    local_host: str
    local_port: int
    remote_port: int = 0
    label: str = ""  # the tunnel's `name` key


@dataclass(slots=True)
class FileSettings:
    """What a file said: `values` keyed like the argparse destinations, and the rest."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    clients: list[ClientEntry] = field(default_factory=list)
    tunnels: list[TunnelEntry] = field(default_factory=list)
    guard: dict[str, Any] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)


class _Source:
    """The file's text, for error messages that point at a line."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines: dict[str, int] = {}
        table, counts = "", dict[str, int]()
        for n, line in enumerate(text.splitlines(), 1):
            m = _HEADER.match(line)
            if m:
                name = m.group(2)
                if m.group(1) == "[[":
                    counts[name] = counts.get(name, 0) + 1
                    table = f"{name}[{counts[name]}]"
                    self.lines.setdefault(name, n)
                else:
                    table = name
                self.lines.setdefault(table, n)
                continue
            k = _KEY.match(line)
            if k:
                self.lines.setdefault(f"{table}.{k.group(1)}" if table else k.group(1), n)

    def error(self, key: str, problem: str) -> ConfigError:
        line = self.lines.get(key)
        where = f"{self.path} line {line}" if line else self.path
        return ConfigError(f"{where}: {key}: {problem}")


class _Table:
    """One TOML table being read: typed `take_*` calls, then `finish` refuses the rest."""

    def __init__(self, src: _Source, data: dict[str, Any], prefix: str) -> None:
        self.src, self.data, self.prefix = src, dict(data), prefix

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def fail(self, k: str, problem: str) -> ConfigError:
        return self.src.error(self.key(k), problem)

    def take(self, k: str, check: Callable[[Any], Any]) -> Any:
        """The checked value, or None if absent; `check` raises ValueError(reason)."""
        if k not in self.data:
            return None
        value = self.data.pop(k)
        try:
            return check(value)
        except ValueError as exc:
            raise self.fail(k, str(exc)) from None
        except ConfigError as exc:  # parse_hostport's message, re-located
            raise self.fail(k, str(exc).removeprefix("address ")) from None

    def finish(self, known: tuple[str, ...] | list[str]) -> None:
        for k in self.data:
            near = difflib.get_close_matches(k, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise self.fail(k, f"unknown key{hint}")


# ---------------------------------------------------------------------- value checks


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), f"a {type(value).__name__}"
    )


def a_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_kind(value)}")
    return value


def a_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_kind(value)}")
    return value


def an_int(lo: int, hi: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be an integer, not {_kind(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, not {value}")
        return value

    return check


def a_float(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, not {_kind(value)}")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, not {value:g}")
        return float(value)

    return check


def a_hostport(value: Any) -> str:
    parse_hostport(a_str(value), "address")
    return str(value)


def a_dial_hostport(value: Any) -> str:
    """An address we connect to: port 0 would be retried forever, never reached."""
    if not parse_hostport(a_str(value), "address")[1]:
        raise ValueError("the port must not be 0")
    return str(value)


def a_rate(value: Any) -> float:
    if not isinstance(value, int | float | str) or isinstance(value, bool):
        raise ValueError(f'must be a rate such as "2 MiB/s", not {_kind(value)}')
    return parse_rate(value)


def a_token(value: Any) -> bytes:
    token = a_str(value).encode()
    if len(token) < MIN_TOKEN:
        raise ValueError(f"the token is {len(token)} bytes, at least {MIN_TOKEN} needed")
    return token


def a_token_str(value: Any) -> str:
    return a_token(value).decode()


def a_name(value: Any) -> str:
    name = a_str(value)
    why = check_label(name)
    if why is not None:
        raise ValueError(f"{name!r} {why}")
    return name


_COMMON: dict[str, Callable[[Any], Any]] = {
    "token": a_token_str,
    "token_file": a_str,
    "window": an_int(1024, 2**31 - 1),
    "max_frame": an_int(256, 64 * 1024 * 1024),
    "verbose": an_int(0, 3),
    "debug": a_bool,
    "log_query": a_bool,
}
_RELAY: dict[str, Callable[[Any], Any]] = {
    **_COMMON,
    "addr": a_hostport,
    "start_port": an_int(1, 65535),
    "end_port": an_int(1, 65535),
    "public_host": a_str,
    "tokens_file": a_str,
    "tls_cert": a_str,
    "tls_key": a_str,
    "metrics_addr": a_hostport,
    "lease": a_float(0, 86400 * 7),
    "idle_lease": a_float(0, 86400 * 7),
    "heartbeat": a_float(0.05, 3600),
    "port_quota": an_int(1, 65535),
    "name_quota": an_int(1, MAX_NAME_QUOTA),
    "bandwidth": a_rate,
    "domain": a_str,
    "http_addr": a_hostport,
    "https_addr": a_hostport,
    "relay_buffer": an_int(64 * 1024, 1 << 40),
}
_EXPOSE: dict[str, Callable[[Any], Any]] = {
    **_COMMON,
    "server": a_dial_hostport,
    "local": a_dial_hostport,
    "remote_port": an_int(0, 65535),
    "tls": a_bool,
    "tls_ca": a_str,
    "tls_server_name": a_str,
    "max_attempts": an_int(0, 1_000_000),
    "http": a_bool,
    "https": a_bool,
    "subdomain": a_str,
    "inspect": a_hostport,
}
_LIMITS: dict[str, Callable[[Any], Any]] = {
    "max_pre_auth": an_int(1, 1_000_000),
    "max_pre_auth_per_source": an_int(1, 1_000_000),
    "max_failures": an_int(1, 1_000_000),
    "failure_window": a_float(0.1, 86400),
    "session_buffer": an_int(64 * 1024, 1 << 34),
    "max_streams": an_int(1, 1 << 20),
    "control_buffer": an_int(4096, 1 << 30),
    "send_buffer": an_int(4096, 1 << 30),
    "handshake_timeout": a_float(0.1, 600),
    "linger": a_float(1, 86400),
    "stall_timeout": a_float(0.1, 86400),
}
_NEGATED = {"http_log": "no_http_log", "reconnect": "no_reconnect"}


def key_check(role: str, key: str) -> Callable[[Any], Any]:
    """The check of `key` in a `role` ("relay"/"expose") file or its [limits], so that
    the same option given as a flag is held to the same bounds (build.check_bounds)."""
    return (_RELAY if role == "relay" else _EXPOSE).get(key) or _LIMITS[key]


#: file names in a config file are relative to the file's own directory
PATH_KEYS = ("token_file", "tokens_file", "tls_cert", "tls_key", "tls_ca")


def _relative_to(config: str, name: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(config)), os.path.expanduser(name))


# ---------------------------------------------------------------------- loading


def _read(path: str) -> tuple[_Source, dict[str, Any]]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    if len(raw) > MAX_FILE:
        raise ConfigError(f"{path}: larger than {MAX_FILE} bytes, not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)  # "Invalid value (at line 3, column 8)"
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if m:
            reason = msg[: m.start()].strip()
            raise ConfigError(f"{path} line {m.group(1)}: {reason} (column {m.group(2)})") from None
        raise ConfigError(f"{path}: {msg}") from None
    return _Source(path, text), data


def read_token_text(path: str) -> str:
    """A token or tokens file's text, read bounded (MAX_TOKEN_FILE) and strictly UTF-8, so
    that every reader of one fails alike; ValueError(why, without the path) otherwise."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise ValueError(exc.strerror or str(exc)) from None
    if len(raw) > MAX_TOKEN_FILE:
        raise ValueError(f"larger than {MAX_TOKEN_FILE} bytes, not a token file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start})") from None


def first_line(text: str) -> str:
    """The first line, stripped: what a token file holds (later lines are ignored)."""
    return io.StringIO(text, newline=None).readline().strip()


def _read_token_file(table: _Table, key: str, path: str) -> bytes:
    try:
        token = first_line(read_token_text(path))
    except ValueError as exc:
        raise table.fail(key, f"cannot read {path}: {exc}") from None
    try:
        return a_token(token)
    except ValueError as exc:
        raise table.fail(key, f"{path}: {exc}") from None


def _top(top: _Table, checks: dict[str, Callable[[Any], Any]]) -> FileSettings:
    out = FileSettings(top.src.path)
    for key, check in checks.items():
        value = top.take(key, check)
        if value is not None:
            out.values[key] = value
    for key, dest in _NEGATED.items():
        if key in top.data and (key == "http_log" or checks is _EXPOSE):
            out.values[dest] = not top.take(key, a_bool)
    for key in PATH_KEYS:
        if key in out.values:
            out.values[key] = _relative_to(top.src.path, out.values[key])
    limits = top.take("limits", _a_table)
    if limits is not None:
        lt = _Table(top.src, limits, "limits")
        for key, check in _LIMITS.items():
            value = lt.take(key, check)
            if value is not None:
                (out.guard if key in GUARD_LIMITS else out.session)[key] = value
        lt.finish(list(_LIMITS))
    return out


def _a_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a table, not {_kind(value)}")
    return value


def _tables(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ValueError("must be an array of tables ([[...]] sections)")
    return value


def load_relay(path: str) -> FileSettings:
    """Read and check a relay's file; ConfigError (one line) on the first problem."""
    src, data = _read(path)
    top = _Table(src, data, "")
    out = _top(top, _RELAY)
    for i, entry in enumerate(top.take("clients", _tables) or [], 1):
        out.clients.append(_client(_Table(src, entry, f"clients[{i}]"), out.clients))
    if out.clients and any(k in out.values for k in ("token", "token_file", "tokens_file")):
        raise src.error("clients", "use either [[clients]] or token/token_file/tokens_file")
    top.finish([*RELAY_KEYS, "limits", "clients"])
    return out


def _client(t: _Table, seen: list[ClientEntry]) -> ClientEntry:
    name = t.take("name", a_str)
    if not name:
        raise t.src.error(t.prefix, "a client needs a name")
    if any(c.name == name for c in seen):
        raise t.fail("name", f"client name {name!r} appears twice")
    token = t.take("token", a_token)
    token_file = t.take("token_file", a_str)
    if (token is None) == (token_file is None):
        raise t.src.error(t.prefix, f"client {name}: give exactly one of token, token_file")
    if token_file is not None:
        token = _read_token_file(t, "token_file", _relative_to(t.src.path, token_file))
    entry = ClientEntry(
        name, token, t.take("port_quota", an_int(1, 65535)), t.take("bandwidth", a_rate)
    )
    t.finish(["name", "token", "token_file", "port_quota", "bandwidth"])
    return entry


def load_expose(path: str) -> FileSettings:
    """Read and check an expose file; ConfigError (one line) on the first problem."""
    src, data = _read(path)
    top = _Table(src, data, "")
    out = _top(top, _EXPOSE)
    for i, entry in enumerate(top.take("tunnels", _tables) or [], 1):
        out.tunnels.append(_tunnel(_Table(src, entry, f"tunnels[{i}]"), out.tunnels))
    if "tunnels" in data and not 1 <= len(out.tunnels) <= 16:
        raise src.error("tunnels", "1 to 16 tunnels per expose")
    if out.tunnels and ("local" in out.values or "remote_port" in out.values):
        raise src.error("tunnels", "use either [[tunnels]] or local/remote_port")
    named = [k for k in ("http", "https", "subdomain") if out.values.get(k)]
    if len(out.tunnels) > 1 and named:
        raise src.error(named[0], "a named (HTTP/TLS) tunnel needs an expose of its own")
    top.finish([*EXPOSE_KEYS, "limits", "tunnels"])
    return out


def _tunnel(t: _Table, seen: list[TunnelEntry]) -> TunnelEntry:
    """One [[tunnels]] entry. A public port or a name may appear once: the relay would
    refuse the second bind as "in use" at run time, and two names would log as one."""
    local = t.take("local", a_hostport)
    if local is None:
        raise t.src.error(t.prefix, 'a tunnel needs local = "HOST:PORT"')
    host, port = parse_hostport(local, "local", "127.0.0.1")
    if not port:
        raise t.fail("local", "the local port must not be 0")
    entry = TunnelEntry(
        host, port, t.take("remote_port", an_int(0, 65535)) or 0, t.take("name", a_name) or ""
    )
    for n, other in enumerate(seen, 1):
        if entry.remote_port and entry.remote_port == other.remote_port:
            raise t.fail("remote_port", f"port {entry.remote_port} is tunnels[{n}]'s already")
        if entry.label and entry.label == other.label:
            raise t.fail("name", f"tunnel name {entry.label!r} appears twice")
    t.finish(["local", "remote_port", "name"])
    return entry
