"""Server options for scripts and session tokens: `setenv`, `tmp-dir`, `auth-gen-token`,
`auth-gen-token-secret` (handlers for the option table in config_options.py)."""

from __future__ import annotations

from trivpn.errors import ConfigError
from trivpn.profile.checks import Invalid, integer, nargs, read_content
from trivpn.profile.table import MAX_SECONDS
from trivpn.server.authtoken import AuthTokenKey
from trivpn.server.config_draft import Draft, path

__all__ = ["SCRIPT_OPTIONS"]

#: Environment variable names a `setenv` may set (OpenVPN takes any; a script needs a sane one).
_MAX_SETENV = 256


def _setenv(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 2)
    name, value = args[0], args[1] if len(args) == 2 else ""
    if name == "opt" or name.upper() in ("FORWARD_COMPATIBLE",):
        return  # `setenv opt X` marks X as optional; not a variable
    if not name or "=" in name or "\0" in name or "\0" in value or not name.isprintable():
        raise Invalid(f"{name[:40]!r} is not a usable environment variable name")
    if len(d.setenv) >= _MAX_SETENV:
        raise Invalid(f"more than {_MAX_SETENV} setenv lines")
    d.setenv.append((name, value))


def _auth_gen_token(d: Draft, line: int, args: list[str], inline: bool) -> None:
    """`auth-gen-token [lifetime] [renewal] [external-auth]` (renewal only in second place)."""
    nargs(args, 0, 3)
    lifetime = integer(args[0], 0, MAX_SECONDS) if args else 0
    renewal: int | None = None
    external = False
    for i, arg in enumerate(args[1:], start=2):
        if i == 2 and arg.isascii() and arg.isdigit():
            renewal = integer(arg, 1, MAX_SECONDS)
        elif arg == "external-auth":
            external = True
        else:
            raise Invalid(f"unexpected {arg[:40]!r} (lifetime, renewal time, external-auth)")
    d.auth_gen_token = (lifetime, renewal, external)


def _auth_gen_token_secret(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    text = read_content(d.base_dir, args[0], inline)
    try:
        AuthTokenKey.from_pem(text)
    except ConfigError as exc:
        raise Invalid(str(exc)) from None
    d.auth_gen_token_secret = text


def _tmp_dir(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.tmp_dir = path(d, args[0])


SCRIPT_OPTIONS = {
    "tmp-dir": _tmp_dir,
    "setenv": _setenv,
    "auth-gen-token": _auth_gen_token,
    "auth-gen-token-secret": _auth_gen_token_secret,
}
