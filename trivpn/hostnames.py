"""Host names a resolver can be asked about at all.

Why: the standard library's `getaddrinfo` (and trio's, which calls it) runs every `str`
host through the IDNA codec first, and a name the codec refuses — an empty label as in
`a..b`, a label over 63 characters — raises `UnicodeError`, not `socket.gaierror`. Checked
where a command line or a file names a host, that is a one-line `ConfigError` instead of an
internal error at connect time. ASCII names are checked by hand, as the codec would, so that
a client's start does not import the codec (≈ 1 ms) for them.
"""

from __future__ import annotations

from trivpn.errors import ConfigError

__all__ = ["check_host_name", "host_name_problem"]


def host_name_problem(host: str) -> str | None:
    """Why `host` (a name or an IP literal) is no host name, or None if it is one."""
    if host.isascii():
        labels = host.split(".")
        if len(labels) > 1 and labels[-1] == "":
            labels.pop()  # a trailing dot: fully qualified
        if any(not 0 < len(label) < 64 for label in labels):
            return "a label is empty or longer than 63 characters"
        return None
    try:
        host.encode("idna")
    except UnicodeError as exc:
        return f"{exc}"
    return None


def check_host_name(host: str, what: str) -> None:
    """ConfigError if `host` is not a host name ("" is left to the caller's default)."""
    if host and (problem := host_name_problem(host)) is not None:
        raise ConfigError(f"{what}: {host!r} is not a valid host name ({problem})")
