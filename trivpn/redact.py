"""Keeping secrets out of logs: control messages and option lines, sanitised before printing.

Why a module of its own: a PUSH_REPLY carries the session's `auth-token` (a password
substitute the client sends on every later key exchange), and option lines may carry
passwords. OpenVPN blanks these before logging a control message; every trivpn site
that logs or reprs a control message, a pushed option or a profile line goes through
`redact_option` / `redact_control`, so no verbosity level can print them.
"""

from __future__ import annotations

__all__ = ["REDACTED", "SECRET_OPTIONS", "redact_control", "redact_option"]

REDACTED = "[redacted]"
#: Options whose arguments are secrets (pushed or written in a profile).
SECRET_OPTIONS = frozenset({"auth-token", "auth-token-user", "password", "auth-user-pass"})


def redact_option(text: str) -> str:
    """One option line with the arguments of a secret option blanked."""
    stripped = text.lstrip()
    name = stripped.split(None, 1)[0] if stripped else ""
    if name.lower() in SECRET_OPTIONS and stripped != name:
        return f"{name} {REDACTED}"
    return text


def redact_control(text: str) -> str:
    """A control message (``PUSH_REPLY,opt,opt``, ``AUTH_FAILED,...``) fit for a log."""
    return ",".join(redact_option(part) for part in text.split(","))
