"""The options that are not a table row: explicit functions (see :mod:`.table`).

Each takes the parse context, the line number, the option name, its arguments and
whether they came from an inline block; it assigns fields of ``ctx.scope`` and
raises :class:`~trivpn.profile.table.Invalid` for a bad argument.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from trivpn.hostnames import host_name_problem
from trivpn.profile import netopts
from trivpn.profile.checks import (
    Invalid,
    integer,
    key_direction,
    nargs,
    proto_name,
    read_content,
    static_key,
)
from trivpn.profile.model import ProxySpec
from trivpn.profile.scope import RawRemote, Scope

__all__ = ["MAX_CUSTOM_HTTP_HEADERS", "PRIVATE_FILES", "SOCKS_PROXY_PORT", "SPECIAL", "Context", "key_mode_warning"]

#: ``socks-proxy`` port when none is given (OpenVPN's default).
SOCKS_PROXY_PORT = 1080
#: OpenVPN's ``MAX_CUSTOM_HTTP_HEADER``.
MAX_CUSTOM_HTTP_HEADERS = 10
#: ``http-proxy`` third argument values that are not an auth file.
_HTTP_PROXY_AUTO = frozenset({"auto", "auto-nct"})
#: ``http-proxy`` auth methods we implement (NTLM and Digest are not).
_HTTP_PROXY_METHODS = frozenset({"none", "basic"})


class Context(Protocol):
    """What an explicit option function may use of the parser."""

    #: where the current line's values go: the global scope or a <connection> block's
    scope: Scope
    base_dir: Path | None
    #: names from `ignore-unknown-option`: skipped without a warning
    ignore_unknown: set[str]

    @property
    def in_block(self) -> bool: ...

    def apply(self, line: int, tokens: list[str]) -> None: ...


def _remote(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    nargs(args, 1, 3)
    host = args[0]
    if not host:
        raise Invalid("empty host name")
    if (problem := host_name_problem(host)) is not None:
        raise Invalid(f"{host!r} is not a valid host name ({problem})")
    port = integer(args[1], 1, 65535) if len(args) > 1 else None
    proto = proto_name(args[2]) if len(args) > 2 else None
    if ctx.in_block and ctx.scope.extra.raw_remotes:
        raise Invalid("a <connection> block may hold only one 'remote'")
    ctx.scope.append("raw_remotes", RawRemote(line, host, port, proto))


def _tls_auth(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1 if inline else 2)  # an inline key takes its direction from key-direction
    ctx.scope.set("tls_auth", static_key(read_content(ctx.base_dir, args[0], inline)))
    if len(args) == 2:
        ctx.scope.set("key_direction", key_direction(args[1]))


def _user_pass_lines(ctx: Context, arg: str, inline: bool) -> list[str]:
    """The non-blank lines of a credentials file or inline block."""
    text = read_content(ctx.base_dir, arg, inline)
    return [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]


def _auth_user_pass(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    nargs(args, 0, 1)
    if not args:
        ctx.scope.set("auth_user_pass", True)
        return
    lines = _user_pass_lines(ctx, args[0], inline)
    if not lines:
        raise Invalid("no username found")
    if len(lines) == 1:
        ctx.scope.set("auth_user_pass", True)
        ctx.scope.warn(
            line, f"option 'auth-user-pass' (line {line}) gives no password; it must be entered"
        )
        return
    ctx.scope.set("auth_user_pass", (lines[0], lines[1]))


def _file_path(ctx: Context, arg: str) -> Path:
    path = Path(arg)
    return path if path.is_absolute() or ctx.base_dir is None else ctx.base_dir / path


#: Options whose file holds a secret: OpenVPN warns when group or others may read it.
PRIVATE_FILES = frozenset(
    {"key", "tls-auth", "tls-crypt", "tls-crypt-v2", "auth-user-pass", "askpass", "http-proxy-user-pass"}
)


def key_mode_warning(base_dir: Path | None, arg: str, line: int, name: str = "key") -> str | None:
    """A secret's file that group or others may read: OpenVPN warns about it, so do we."""
    path = Path(arg)
    path = path if path.is_absolute() or base_dir is None else base_dir / path
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (f"option '{name}' (line {line}): '{path}' holds a secret and is readable by group or "
            f"others (mode {mode & 0o777:o}); chmod 600 it")


def _askpass(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    """`askpass [FILE]`: the private key's passphrase from a file's first line, or a prompt."""
    nargs(args, 0, 1)
    if not args:
        ctx.scope.set("askpass", True)
        return
    lines = read_content(ctx.base_dir, args[0], inline).splitlines()
    if not lines or not lines[0]:
        raise Invalid("the passphrase file is empty")
    ctx.scope.set("askpass", lines[0].rstrip("\r"))


def _crl_verify(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    """`crl-verify FILE`, an inline <crl-verify> block, or `crl-verify DIR dir`."""
    nargs(args, 1, 2)
    if len(args) == 2:
        if args[1] != "dir" or inline:
            raise Invalid(f"unexpected {args[1][:20]!r} (only 'dir' may follow)")
        path = _file_path(ctx, args[0])
        if not path.is_dir():
            raise Invalid(f"'{path}' is not a directory")
        ctx.scope.set("crl_dir", str(path))
        return
    text = read_content(ctx.base_dir, args[0], inline)
    if "-----BEGIN X509 CRL-----" not in text:
        raise Invalid("no PEM CRL found")
    ctx.scope.set("crl_verify", text)


def _peer_fingerprint(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    """`peer-fingerprint AB:CD:...` (SHA-256), or an inline block of them, one per line."""
    nargs(args, 1, 1)
    items = [t.strip() for t in args[0].splitlines() if t.strip() and not t.strip().startswith(("#", ";"))]
    if not inline:
        items = [args[0]]
    found = list(ctx.scope.profile.peer_fingerprints)
    for item in items:
        parts = item.split(":")
        if len(parts) != 32 or not all(len(p) == 2 for p in parts):
            raise Invalid(f"{item[:100]!r} is not a SHA-256 fingerprint (32 hex bytes with ':')")
        try:
            found.append(bytes.fromhex("".join(parts)))
        except ValueError:
            raise Invalid(f"{item[:100]!r} is not a SHA-256 fingerprint") from None
    ctx.scope.set("peer_fingerprints", found)


def _setenv(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    # `setenv opt OPTION ...` asks for OPTION to be applied if it is known;
    # any other setenv is a variable for the profile's scripts.
    if len(args) >= 2 and args[0] == "opt":
        if args[1].startswith("<"):
            raise Invalid(f"cannot apply inline tag {args[1]!r}")
        ctx.apply(line, args[1:])
        return
    nargs(args, 1, 2)
    if not args[0] or "=" in args[0] or "\0" in args[0]:
        raise Invalid(f"bad variable name {args[0][:40]!r}")
    pairs = [kv for kv in ctx.scope.profile.setenv if kv[0] != args[0]]
    ctx.scope.set("setenv", [*pairs, (args[0], args[1] if len(args) == 2 else "")])


def _ignore_unknown_option(
    ctx: Context, line: int, name: str, args: list[str], inline: bool
) -> None:
    if not args:
        raise Invalid("needs at least one option name")
    ctx.ignore_unknown.update(a.removeprefix("--") for a in args)


# ---- routing and DNS ---------------------------------------------------------------------


def _route(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    ctx.scope.append("routes", netopts.route(args, names=True))


def _route_gateway(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    """``route-gateway ADDR``, or ``dhcp``: OpenVPN then learns the gateway from a DHCP
    answer seen on a TAP device; on a TUN there is none and it sets nothing (the server's
    route-gateway or the net30 peer is used), so it is a warning here, not an error."""
    nargs(args, 1, 1)
    if args[0] == "dhcp":
        ctx.scope.warn(
            line,
            f"option '{name} dhcp' (line {line}) is for TAP devices and sets nothing on a TUN;"
            " routes use the server's route-gateway",
        )
        return
    ctx.scope.set("route_gateway", netopts.ipv4(args[0]))


def _route_ipv6(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    ctx.scope.append("routes_ipv6", netopts.route_ipv6(args))


def _redirect_gateway(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    """An unknown flag is an error, as in OpenVPN: a misspelt ``ipv6`` would leak IPv6."""
    flags, unknown = netopts.redirect_flags(args)
    if unknown:
        raise Invalid(f"unknown flag {unknown[0][:40]!r} ({', '.join(sorted(netopts.REDIRECT_FLAGS))})")
    ctx.scope.set("redirect_gateway", netopts.merge_redirect(ctx.scope.get("redirect_gateway"), flags))


def _dhcp_option(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    ctx.scope.append("dhcp_option_lines", " ".join([name, *args]))
    value = netopts.dhcp_option(args)
    if value is None:
        ctx.scope.warn(
            line, f"option '{name} {args[0][:40]}' (line {line}) is not supported and was ignored"
        )
        return
    kind, text = value
    target = "dns_servers" if kind == "dns" else "dns_domains"
    if text not in ctx.scope.get(target):
        ctx.scope.append(target, text)


def _dns(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    if len(args) >= 2 and args[0] == "search-domains":
        for d in args[1:]:
            if netopts.domain(d) not in ctx.scope.get("dns_domains"):
                ctx.scope.append("dns_domains", d)
        return
    if len(args) >= 4 and args[0] == "server" and args[2] == "address":
        integer(args[1].removeprefix("-"), 0, 127)

        def warn(text: str) -> None:
            ctx.scope.warn(line, f"option '{name}' (line {line}): {text}")

        for a in args[3:]:
            addr = netopts.dns_address(a, warn)
            if addr not in ctx.scope.get("dns_servers"):
                ctx.scope.append("dns_servers", addr)
        return
    ctx.scope.warn(
        line, f"option '{name} {' '.join(args[:3])[:60]}' (line {line}) is not supported and was ignored"
    )


def _pull_filter(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    ctx.scope.append("pull_filters", netopts.pull_filter(args))


# ---- proxies ----------------------------------------------------------------------------


def _proxy_credentials(
    ctx: Context, line: int, name: str, arg: str, inline: bool
) -> tuple[tuple[str, str] | None, bool]:
    """(credentials, ask) from a proxy auth file: user and password lines, or 'stdin'."""
    if arg == "stdin" and not inline:
        return None, True
    lines = _user_pass_lines(ctx, arg, inline)
    if not lines:
        raise Invalid("no username found in the proxy auth file")
    if len(lines) == 1:
        ctx.scope.warn(
            line, f"option '{name}' (line {line}) gives no proxy password; it must be entered"
        )
        return None, True
    return (lines[0], lines[1]), False


def _proxy_host_port(host: str, port: str) -> tuple[str, int]:
    if not host:
        raise Invalid("empty proxy host name")
    if (problem := host_name_problem(host)) is not None:
        raise Invalid(f"{host!r} is not a valid host name ({problem})")
    return host, integer(port, 1, 65535)


def _http_proxy(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    if len(args) < 2:
        raise Invalid("needs the proxy host and port")
    nargs(args, 2, 4)
    host, port = _proxy_host_port(args[0], args[1])
    auth, credentials, ask = "none", None, False
    if len(args) >= 3:
        if args[2] in _HTTP_PROXY_AUTO:
            if len(args) == 4:
                raise Invalid(f"no auth method may follow {args[2]!r}")
            auth = args[2]
        else:
            auth = args[3].lower() if len(args) == 4 else "basic"
            if auth not in _HTTP_PROXY_METHODS:
                raise Invalid(f"proxy auth method {args[3]!r} is not supported (basic or none)")
            if auth == "basic":
                credentials, ask = _proxy_credentials(ctx, line, name, args[2], False)
    ctx.scope.set("http_proxy", ProxySpec(host, port, auth, credentials, ask))


def _http_proxy_user_pass(
    ctx: Context, line: int, name: str, args: list[str], inline: bool
) -> None:
    nargs(args, 1, 1)
    credentials, ask = _proxy_credentials(ctx, line, name, args[0], inline)
    if credentials is None or ask:
        raise Invalid("needs a username line and a password line")
    ctx.scope.set("http_proxy_user_pass", credentials)


def _http_proxy_option(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    nargs(args, 2, 3)
    what = args[0]
    if any(c in a for a in args for c in "\r\n\0") or not all(a.isascii() for a in args):
        raise Invalid("contains characters an HTTP header cannot carry")
    if what == "VERSION" and len(args) == 2:
        if args[1] not in ("1.0", "1.1"):
            raise Invalid(f"HTTP version must be 1.0 or 1.1, not {args[1]!r}")
        ctx.scope.set("http_version", args[1])
    elif what == "AGENT" and len(args) == 2:
        ctx.scope.set("http_agent", args[1])
    elif what in ("CUSTOM-HEADER", "EXT1", "EXT2"):
        if len(ctx.scope.extra.http_headers) >= MAX_CUSTOM_HTTP_HEADERS:
            raise Invalid(f"at most {MAX_CUSTOM_HTTP_HEADERS} custom headers")
        header = (args[1], args[2] if len(args) == 3 else None)
        ctx.scope.append("http_headers", (line, header))
    else:
        raise Invalid(f"unknown or malformed {what!r} (VERSION, AGENT or CUSTOM-HEADER)")


def _socks_proxy(ctx: Context, line: int, name: str, args: list[str], inline: bool) -> None:
    nargs(args, 1, 3)
    host, port = _proxy_host_port(args[0], args[1] if len(args) > 1 else str(SOCKS_PROXY_PORT))
    credentials, ask = None, False
    if len(args) == 3:
        credentials, ask = _proxy_credentials(ctx, line, name, args[2], False)
    auth = "userpass" if credentials is not None or ask else "none"
    ctx.scope.set("socks_proxy", ProxySpec(host, port, auth, credentials, ask))


Special = Callable[[Context, int, str, list[str], bool], None]

#: Options handled by an explicit function: name -> function.
SPECIAL: Mapping[str, Special] = {
    "remote": _remote,
    "tls-auth": _tls_auth,
    "auth-user-pass": _auth_user_pass,
    "setenv": _setenv,
    "askpass": _askpass,
    "crl-verify": _crl_verify,
    "peer-fingerprint": _peer_fingerprint,
    "ignore-unknown-option": _ignore_unknown_option,
    "http-proxy": _http_proxy,
    "http-proxy-option": _http_proxy_option,
    "http-proxy-user-pass": _http_proxy_user_pass,
    "socks-proxy": _socks_proxy,
    "route": _route,
    "route-ipv6": _route_ipv6,
    "route-gateway": _route_gateway,
    "redirect-gateway": _redirect_gateway,
    "dhcp-option": _dhcp_option,
    "dns": _dns,
    "pull-filter": _pull_filter,
}
