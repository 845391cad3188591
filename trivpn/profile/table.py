"""The option table: how each client-profile option is treated and validated.

Theory of operation
-------------------
:func:`~trivpn.profile.options.iter_options` turns profile text into option lines.
:mod:`trivpn.profile.profile` hands each line to one of five treatments, looked up by
name in this order:

1. **the table** (:data:`TABLE`) - a simple option: a row says how many arguments it
   takes, whether the first one names a file (or is the body of an inline block like
   ``<ca>``), which validator turns the arguments into a value, and which field the
   value goes to (plus constant companions, e.g. ``local`` also sets ``bind``);
2. **an explicit function** (:data:`trivpn.profile.special.SPECIAL`) - the few options
   whose meaning is not "one value into one field": ``remote`` (accumulates, one per
   ``<connection>``), ``tls-auth`` (key plus optional direction, arity depends on
   inline), ``auth-user-pass`` and the proxy family (credential files that may only
   warn), ``setenv opt`` and ``ignore-unknown-option`` (act on the parse itself);
3. **refused** (:data:`UNSAFE_OPTIONS`) - ignoring it would silently skip a check the
   user asked for or bypass a transport they configured: :class:`ConfigError`;
4. **silently accepted** (:data:`SILENT_OPTIONS`, or named by ``ignore-unknown-option``
   earlier) - ignoring it is exactly right for our client;
5. **everything else** - skipped with one warning line
   ``option 'X' (line N) is not supported and was ignored``.

Values land in a :class:`~trivpn.profile.scope.Scope`: the global options fill one, each
``<connection>`` block fills its own (only :data:`CONNECTION_OPTIONS` are allowed
there).  The text is walked once.  The profile for block *k* is the global scope with
block *k* laid over it (:meth:`~trivpn.profile.scope.Scope.overlay`): what the block
sets wins, whatever it leaves alone comes from the global options, as in OpenVPN.

Repeated options: every table option is single-valued, a later line replaces an
earlier one.  Only the explicit functions accumulate: ``remote`` lines form the list
of servers, ``http-proxy-option`` headers add up (a block's come after the global
ones) and ``ignore-unknown-option`` names add up.

Validators raise :class:`~trivpn.profile.checks.Invalid` with a message that the
caller prefixes with ``line N: option 'X':`` - every error is one line of
:class:`ConfigError`.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping
from pathlib import Path

from trivpn.errors import ConfigError
from trivpn.profile import netopts
from trivpn.profile.checks import (
    Invalid,
    Unsupported,
    integer,
    key_direction,
    nargs,
    proto_name,
    read_content,
    static_key,
)
from trivpn.records import dataclass

__all__ = ["CONNECTION_OPTIONS", "SILENT_OPTIONS", "TABLE", "UNSAFE_OPTIONS", "Simple"]

#: Largest ``verb`` OpenVPN knows.
MAX_VERB = 11
#: Upper bound for timer-like integers (seconds); far beyond anything sensible.
MAX_SECONDS = 10 * 365 * 24 * 3600
TUN_MTU_MIN = 100
TUN_MTU_MAX = 65535
#: ``--explicit-exit-notify`` without a count means 1 retry.
DEFAULT_EXPLICIT_EXIT_NOTIFY = 1
#: ``connect-retry`` cap when only the first delay is given (OpenVPN's default).
DEFAULT_CONNECT_RETRY_MAX_DELAY = 300

#: Options where ignoring is the correct client behaviour: accepted without a warning.
SILENT_OPTIONS = frozenset(
    {
        "allow-compression",  # we never compress; the compression options themselves are checked
        "block-outside-dns",  # Windows only
        "dhcp-release",  # Windows only
        "dhcp-renew",  # Windows only
        "disable-dco",  # we are a userspace client, never DCO
        "fast-io",  # performance hint
        "ifconfig-nowarn",  # only silences an OpenVPN warning
        "ip-win32",  # Windows only
        "machine-readable-output",  # log formatting
        "max-routes",  # obsolete no-op
        "mute",  # log rate limiting
        "push-peer-info",  # extra peer info; we send our own fixed set
        "rcvbuf",  # socket buffer tuning; the OS default is fine
        "register-dns",  # Windows only
        "route-delay",  # timing of route setup, not what is routed
        "route-method",  # Windows only
        "setenv-safe",  # environment for scripts we never run
        "sndbuf",  # socket buffer tuning
        "suppress-timestamps",  # log formatting
        "tun-ipv6",  # obsolete no-op
        "windows-driver",  # Windows only
    }
)

#: Options we refuse: ignoring them would skip a check the user asked for, bypass a
#: transport they configured, or they need credentials/features we cannot provide.
UNSAFE_OPTIONS: Mapping[str, str] = {
    "tls-verify": "the certificate verification script would be skipped",
    "verify-hash": "certificate pinning would be skipped",
    "remote-cert-ku": "the server certificate key-usage check would be skipped",
    "remote-cert-eku": "the server certificate extended-key-usage check would be skipped",
    "ns-cert-type": "removed in OpenVPN 2.5; use 'remote-cert-tls server'",
    "pkcs12": "PKCS#12 bundles are not supported; convert to <ca>, <cert> and <key>",
    "pkcs11-providers": "PKCS#11 tokens are not supported",
    "pkcs11-id": "PKCS#11 tokens are not supported",
    "cryptoapicert": "the Windows certificate store is not supported",
    "management-external-key": "external keys via the management interface are not supported",
    "management-external-cert": "external certificates via the management interface are not supported",
    "capath": "a CA directory is not supported; use 'ca'",
    "secret": "static-key mode is not supported (it is insecure and removed in OpenVPN 2.7)",
    "fragment": "it changes the data packet framing and the server would not understand us",
    "server": "this is a server configuration",
    "server-bridge": "this is a server configuration",
    "tls-server": "this is a server configuration",
    "push": "this is a server configuration",
    "ifconfig-pool": "this is a server configuration",
    "client-config-dir": "this is a server configuration",
    "auth-user-pass-verify": "this is a server configuration",
}

#: Options OpenVPN allows inside ``<connection>`` blocks.
CONNECTION_OPTIONS = frozenset(
    {
        "bind",
        "connect-retry",
        "connect-retry-max",
        "connect-timeout",
        "explicit-exit-notify",
        "float",
        "fragment",
        "http-proxy",
        "http-proxy-option",
        "key-direction",
        "link-mtu",
        "local",
        "lport",
        "mssfix",
        "mtu-disc",
        "nobind",
        "port",
        "proto",
        "remote",
        "rport",
        "socks-proxy",
        "tls-auth",
        "tls-crypt",
        "tls-crypt-v2",
        "tun-mtu",
        "tun-mtu-extra",
    }
)

_X509_TYPES = frozenset({"subject", "name", "name-prefix"})
_TLS_VERSIONS = frozenset({"1.0", "1.1", "1.2", "1.3"})
_PEM_CERT = "-----BEGIN CERTIFICATE-----"
_PEM_KEY_SUFFIX = "PRIVATE KEY-----"


# ---- validators: the arguments (after the arity check) -> the field's value -----------

Validator = Callable[[list[str]], object]


def _true(args: list[str]) -> bool:
    return True


def _first(args: list[str]) -> str:
    return args[0]


def _number(lo: int, hi: int) -> Validator:
    """The first argument as an integer in ``lo..hi`` (any second one is ignored)."""
    return lambda args: integer(args[0], lo, hi)


def _one_of(values: Mapping[str, object], message: str) -> Validator:
    """An enumeration: the first argument must be a key of ``values``.

    ``message`` is the error, with ``{!r}`` standing for what was given.
    """

    def check(args: list[str]) -> object:
        if args[0] not in values:
            raise Invalid(message.format(args[0]))
        return values[args[0]]

    return check


def _port(args: list[str]) -> int:
    return integer(args[0], 1, 65535)


def _proto(args: list[str]) -> str:
    return proto_name(args[0])


def _cipher(value: str) -> str:
    if not value or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
        raise Invalid(f"invalid cipher name {value!r}")
    return value.upper()


def _cipher_arg(args: list[str]) -> str:
    return _cipher(args[0])


def _cipher_list(args: list[str]) -> list[str]:
    # A leading '?' marks a cipher as optional; we simply list it.
    return [_cipher(c.removeprefix("?")) for c in args[0].split(":")]


def _pem_cert(args: list[str]) -> str:
    if _PEM_CERT not in args[0]:
        raise Invalid("no PEM certificate found")
    return args[0]


def _pem_key(args: list[str]) -> str:
    if _PEM_KEY_SUFFIX not in args[0]:
        raise Invalid("no PEM private key found")
    return args[0]


def _static_key_arg(args: list[str]) -> str:
    return static_key(args[0])


def _tls_crypt_v2_key(args: list[str]) -> str:
    from trivpn.controlchannel.wrap import TLSCryptV2ClientKey  # the wrap layer imports us

    try:
        TLSCryptV2ClientKey.from_text(args[0])
    except ConfigError as exc:
        raise Invalid(str(exc)) from None
    return args[0]


def _verify_x509_name(args: list[str]) -> tuple[str, str]:
    kind = args[1] if len(args) == 2 else "subject"
    if not args[0]:
        raise Invalid("empty name")
    if kind not in _X509_TYPES:
        raise Invalid(f"unknown type {kind!r} (subject, name or name-prefix)")
    return (args[0], kind)


def _tls_version_min(args: list[str]) -> str:
    if len(args) == 2 and args[1] != "or-highest":
        raise Invalid(f"unexpected {args[1]!r} (only 'or-highest' may follow)")
    if args[0] not in _TLS_VERSIONS:
        # or-highest: a version newer than we know means "the highest we have"
        if len(args) == 2 and _is_version(args[0]):
            return max(_TLS_VERSIONS)
        raise Invalid(f"unknown TLS version {args[0]!r}")
    return args[0]


def _is_version(text: str) -> bool:
    major, dot, minor = text.partition(".")
    return bool(dot) and text.isascii() and major.isdigit() and minor.isdigit() and len(text) < 8


def _tls_version_max(args: list[str]) -> str:
    if args[0] not in _TLS_VERSIONS:
        raise Invalid(f"unknown TLS version {args[0]!r}")
    return args[0]


def _openssl_list(args: list[str]) -> str:
    value = args[0]
    if not value or len(value) > 4096 or not all(c.isascii() and c.isprintable() and c != " " for c in value):
        raise Invalid(f"{value[:60]!r} is not an OpenSSL list")
    return value


def _resolv_retry(args: list[str]) -> float:
    if args[0] == "infinite":
        return math.inf
    return float(integer(args[0], 0, MAX_SECONDS))


def _no_compression(what: str) -> Invalid:
    return Invalid(
        f"compression ({what}) is not supported: compressing before encrypting "
        "leaks plaintext (VORACLE)"
    )


def _comp_lzo(args: list[str]) -> str:
    mode = args[0] if args else "adaptive"
    if mode == "no":
        return "lzo-no"
    if mode in ("yes", "adaptive"):
        raise _no_compression(f"comp-lzo {mode}")
    raise Invalid(f"unknown mode {mode!r} (yes, no or adaptive)")


def _compress(args: list[str]) -> str:
    alg = args[0] if args else "stub"
    if alg in ("stub", "stub-v2"):
        return alg
    if alg in ("lzo", "lz4", "lz4-v2"):
        raise _no_compression(alg)
    if alg == "migrate":
        raise Unsupported("compress migrate")
    raise Invalid(f"unknown algorithm {alg!r}")


def _keepalive(args: list[str]) -> tuple[int, int]:
    return (integer(args[0], 0, MAX_SECONDS), integer(args[1], 0, MAX_SECONDS))


def _reneg_sec(args: list[str]) -> int:
    seconds = integer(args[0], 0, MAX_SECONDS)
    if len(args) == 2:  # the server-side jitter bound: checked, not used by a client
        integer(args[1], 0, MAX_SECONDS)
    return seconds


def _connect_retry(args: list[str]) -> tuple[int, int]:
    first = integer(args[0], 0, MAX_SECONDS)
    cap = integer(args[1], 0, MAX_SECONDS) if len(args) == 2 else DEFAULT_CONNECT_RETRY_MAX_DELAY
    return (first, max(first, cap))


def _explicit_exit_notify(args: list[str]) -> int:
    return integer(args[0], 0, MAX_SECONDS) if args else DEFAULT_EXPLICIT_EXIT_NOTIFY


def _static_challenge(args: list[str]) -> tuple[str, bool]:
    if args[1] not in ("0", "1"):
        raise Invalid(f"echo flag must be 0 or 1, not {args[1][:20]!r}")
    return (args[0], args[1] == "1")


def _management(args: list[str]) -> tuple[str, int | None, str | None]:
    """``IP PORT [pw-file]`` or ``/path unix [pw-file]`` (files resolved by the caller)."""
    if len(args) == 3 and args[2] == "stdin":
        raise Invalid("a password from 'stdin' is not supported; give a password file")
    password = args[2] if len(args) == 3 else None
    if args[1] == "unix":
        return (args[0], None, password)
    return (args[0], integer(args[1], 1, 65535), password)


def _status(args: list[str]) -> tuple[str, int]:
    return (args[0], integer(args[1], 0, MAX_SECONDS) if len(args) > 1 else 60)


def _ip_address(args: list[str]) -> str:
    try:
        ipaddress.ip_address(args[0])
    except ValueError:
        raise Invalid(f"{args[0][:60]!r} must be an IP address") from None
    return args[0]


def _command(args: list[str]) -> str:
    if not args[0].strip():
        raise Invalid("empty command")
    return args[0]


def _account_name(args: list[str]) -> str:
    name = args[0]
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._-" for c in name):
        raise Invalid(f"{name[:64]!r} is not a user or group name")
    return name


# ---- the table --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Simple:
    """One row of the table: how one option's arguments become one field's value."""

    #: the field the value goes to (a Profile or parse-only field); None: checked only
    field: str | None
    parse: Validator = _first
    lo: int = 1  # fewest arguments
    hi: int = 1  # most arguments
    #: the first argument names a file, or is the body of an inline block like <ca>
    file: bool = False
    #: constant assignments that come with the option (``local`` also sets ``bind``)
    also: tuple[tuple[str, object], ...] = ()

    def assignments(
        self, args: list[str], inline: bool, base_dir: Path | None
    ) -> list[tuple[str, object]]:
        """Check ``args`` and return the ``(field, value)`` pairs they set."""
        nargs(args, self.lo, self.hi)
        if self.file:
            args = [read_content(base_dir, args[0], inline), *args[1:]]
        value = self.parse(args)
        if self.field is None:
            return list(self.also)
        return [(self.field, value), *self.also]


def _flag(field: str, *also: str) -> Simple:
    return Simple(field, _true, 0, 0, also=tuple((name, True) for name in also))


def _int(field: str, lo: int, hi: int, *, hi_args: int = 1) -> Simple:
    return Simple(field, _number(lo, hi), 1, hi_args)


#: Every simple option: name -> how its arguments become a field's value.
TABLE: Mapping[str, Simple] = {
    # role and device
    "client": _flag("pull", "tls_client"),
    "pull": _flag("pull"),
    "tls-client": _flag("tls_client"),
    "mode": Simple(
        None, _one_of({"p2p": None}, "is not supported: this is a server configuration")
    ),
    "dev": Simple("dev"),
    "dev-type": Simple(
        "dev_kind", _one_of({"tun": "tun", "tap": "tap"}, "unknown device type {!r} (use tun)")
    ),
    "persist-tun": _flag("persist_tun"),
    "persist-key": _flag("persist_key"),
    # trivpn's own: write it `setenv opt trivpn-kill-switch` so OpenVPN only warns (README)
    "trivpn-kill-switch": _flag("kill_switch"),
    # where to connect (the remote lines themselves are an explicit function)
    "proto": Simple("proto", _proto),
    "port": Simple("port", _port),
    "rport": Simple("port", _port),
    "remote-random": _flag("remote_random"),
    "resolv-retry": Simple("resolv_retry", _resolv_retry),
    "connect-retry": Simple("connect_retry", _connect_retry, 1, 2),
    "connect-retry-max": _int("connect_retry_max", 0, 2**31),
    "server-poll-timeout": _int("server_poll_timeout", 0, MAX_SECONDS),
    "connect-timeout": _int("server_poll_timeout", 0, MAX_SECONDS),
    "explicit-exit-notify": Simple("explicit_exit_notify", _explicit_exit_notify, 0, 1),
    # local socket
    "nobind": _flag("nobind"),
    "bind": Simple("bind", _true, 0, 1),
    "local": Simple("local", _ip_address, also=(("bind", True),)),
    "lport": Simple("lport", _number(0, 65535), also=(("bind", True),)),
    # keys and certificates: a file name or an inline block
    "ca": Simple("ca", _pem_cert, file=True),
    "cert": Simple("cert", _pem_cert, file=True),
    "key": Simple("key", _pem_key, file=True),  # + a warning for loose modes (profile.py)
    "tls-crypt": Simple("tls_crypt", _static_key_arg, file=True),
    "tls-crypt-v2": Simple("tls_crypt_v2", _tls_crypt_v2_key, 1, 2, file=True),
    "key-direction": Simple("key_direction", lambda args: key_direction(args[0])),
    # TLS checks
    "remote-cert-tls": Simple(
        "remote_cert_tls",
        _one_of({"server": "server"}, "a client can only check 'server' certificates, not {!r}"),
    ),
    "verify-x509-name": Simple("verify_x509_name", _verify_x509_name, 1, 2),
    "tls-version-min": Simple("tls_version_min", _tls_version_min, 1, 2),
    "tls-version-max": Simple("tls_version_max", _tls_version_max),
    "tls-cipher": Simple("tls_cipher", _openssl_list),
    "tls-ciphersuites": Simple("tls_ciphersuites", _openssl_list),
    "tls-groups": Simple("tls_groups", _openssl_list),
    "tls-cert-profile": Simple(
        "tls_cert_profile",
        _one_of({k: k for k in ("legacy", "preferred", "suiteb")}, "unknown profile {!r} (legacy, preferred, suiteb)"),
    ),
    "static-challenge": Simple("static_challenge", _static_challenge, 2, 3),
    "auth-nocache": _flag("auth_nocache"),
    # data channel
    "data-ciphers": Simple("data_ciphers", _cipher_list),
    "ncp-ciphers": Simple("data_ciphers", _cipher_list),
    "cipher": Simple("cipher", _cipher_arg),
    "data-ciphers-fallback": Simple("data_ciphers_fallback", _cipher_arg),
    "auth": Simple("auth", _cipher_arg),
    "comp-lzo": Simple("compression", _comp_lzo, 0, 1),
    "compress": Simple("compression", _compress, 0, 1),
    "mute-replay-warnings": _flag("mute_replay_warnings"),
    "tun-mtu": _int("tun_mtu", TUN_MTU_MIN, TUN_MTU_MAX, hi_args=2),
    # timers and renegotiation
    "ping": _int("ping", 0, MAX_SECONDS),
    "ping-restart": _int("ping_restart", 0, MAX_SECONDS),
    "ping-exit": _int("ping_exit", 0, MAX_SECONDS),
    "keepalive": Simple("keepalive", _keepalive, 2, 2),
    "reneg-sec": Simple("reneg_sec", _reneg_sec, 1, 2),
    "reneg-bytes": _int("reneg_bytes", 0, 2**62),
    "reneg-pkts": _int("reneg_pkts", 0, 2**62),
    "hand-window": _int("hand_window", 0, MAX_SECONDS),
    "verb": _int("verb", 0, MAX_VERB),
    # routing and addresses (route, route-ipv6, redirect-gateway, dhcp-option, dns and
    # pull-filter accumulate or warn: explicit functions)
    "route-metric": Simple("route_metric", lambda args: netopts.metric(args[0])),
    "route-nopull": _flag("route_nopull"),
    "block-ipv6": _flag("block_ipv6"),
    "ifconfig": Simple("ifconfig", netopts.ifconfig, 2, 2),
    "ifconfig-ipv6": Simple("ifconfig_ipv6", netopts.ifconfig_ipv6, 1, 2),
    "topology": Simple("topology", netopts.topology),
    # scripts (the profile's own only; never pushed) and privileges
    "up": Simple("script_up", _command),
    "down": Simple("script_down", _command),
    "route-up": Simple("script_route_up", _command),
    "route-pre-down": Simple("script_route_pre_down", _command),
    "ipchange": Simple("script_ipchange", _command),
    "script-security": _int("script_security", 0, 3),
    "user": Simple("user", _account_name),
    "group": Simple("group", _account_name),
    # watching it run (trivpn.observe)
    "management": Simple("management", _management, 2, 3),
    "management-hold": _flag("management_hold"),
    "management-query-passwords": _flag("management_query_passwords"),
    "auth-retry": Simple(
        "auth_retry",
        _one_of({m: m for m in ("none", "nointeract", "interact")}, "unknown mode {!r}"),
    ),
    "status": Simple("status", _status, 1, 2),
    "status-version": _int("status_version", 1, 3),  # a client prints one layout for all
}
