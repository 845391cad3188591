"""How each server option line is treated: the server's option table.

Theory of operation
-------------------
A line goes to one of five treatments, looked up by name in this order (the same
scheme as the client's :mod:`trivpn.profile.table`):

1. **shared rows** (:data:`SHARED`) - options that mean the same on both sides
   (``ca``, ``cert``, ``key``, ``tls-crypt``, ``data-ciphers``, ``keepalive``, ...):
   the client's own table rows are reused, so arity, inline handling and validation
   are identical; their values land in same-named :class:`Draft` fields;
2. **server functions** (:data:`SERVER`) - ``server``, ``push``, ``management``,
   scripts, ... each checks its arguments and sets :class:`Draft` fields;
3. **refused** (:data:`UNSAFE`) - ignoring it would skip a check or an
   authentication step the administrator asked for: :class:`ConfigError`;
4. **silently accepted** (:data:`SILENT`) - ignoring it is exactly right;
5. **everything else** - one warning line, the option is ignored.

Functions raise :class:`~trivpn.profile.checks.Invalid`; the parser turns that into the
one-line ``line N: option 'X': message`` error.  The combination checks and the
``server`` helper's expansion run after the walk, in :mod:`trivpn.server.config`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Mapping
from ipaddress import IPv6Network
from pathlib import Path

from trivpn.profile.checks import Invalid, integer, key_direction, nargs, read_content, static_key
from trivpn.profile.table import MAX_SECONDS, TABLE, Simple
from trivpn.server.config_draft import (
    Draft,
    command,
    host,
    ipv4,
    ipv6_prefix,
    netmask,
    network,
    pair,
    parse_proto,
    path,
)
from trivpn.server.config_scripts import SCRIPT_OPTIONS

__all__ = ["SERVER", "SHARED", "SILENT", "UNSAFE", "Handler"]

#: peer-ids are 24 bits and 0xFFFFFF means "none": max-clients must stay below it.
MAX_CLIENTS_LIMIT = 0xFFFFFF - 1
_TLS_CRYPT_V2_SERVER_BEGIN = "-----BEGIN OpenVPN tls-crypt-v2 server key-----"
_TLS_CRYPT_V2_SERVER_END = "-----END OpenVPN tls-crypt-v2 server key-----"
#: Ke and Ka, 64 bytes each (``openvpn --genkey tls-crypt-v2-server``).
_TLS_CRYPT_V2_SERVER_KEY_LEN = 128
_PEM_CRL = "-----BEGIN X509 CRL-----"
_PEM_DH = "-----BEGIN DH PARAMETERS-----"

#: Client-table rows that mean the same thing in a server configuration.
SHARED: Mapping[str, Simple] = {
    name: TABLE[name]
    for name in (
        "dev",
        "dev-type",
        "persist-tun",
        "persist-key",
        "port",
        "ca",
        "cert",
        "key",
        "tls-crypt",
        "key-direction",
        "data-ciphers",
        "ncp-ciphers",
        "data-ciphers-fallback",
        "cipher",
        "auth",
        "comp-lzo",
        "compress",
        "mute-replay-warnings",
        "tun-mtu",
        "ping",
        "ping-restart",
        "keepalive",
        "reneg-sec",
        "hand-window",
        "verb",
        "tls-version-min",
        "explicit-exit-notify",
    )
}

#: Accepted without a warning: ignoring them is right for trivpn's server.
SILENT = frozenset(
    {
        "allow-compression",  # we never compress; 'compress'/'comp-lzo' themselves are checked
        "disable-dco",  # userspace data path, never DCO
        "fast-io",
        "float",  # a server always lets authenticated clients float
        "ifconfig-nowarn",
        "machine-readable-output",
        "mute",
        "rcvbuf",
        "sndbuf",
        "suppress-timestamps",
        "tun-ipv6",  # obsolete no-op (the helper still pushes it for old clients)
        "txqueuelen",
        "setenv-safe",
    }
)

#: Refused: ignoring them would skip a check or authentication the admin asked for.
UNSAFE: Mapping[str, str] = {
    "client-cert-not-required": "removed in OpenVPN 2.5; use 'verify-client-cert none'",
    "plugin": "plugins are not supported (their authentication would be skipped)",
    "management-external-key": "external keys via the management interface are not supported",
    "management-external-cert": "external certificates are not supported",
    "tls-verify": "the certificate verification script would be skipped",
    "tls-crypt-v2-verify": "the client key verification script would be skipped",
    "verify-hash": "certificate pinning would be skipped",
    "peer-fingerprint": "certificate pinning would be skipped",
    "verify-x509-name": "the client certificate name check would be skipped",
    "x509-track": "certificate fields for scripts are not supported",
    "remote-cert-ku": "the client certificate key-usage check would be skipped",
    "remote-cert-eku": "the client certificate extended-key-usage check would be skipped",
    "ns-cert-type": "removed in OpenVPN 2.5; use 'remote-cert-tls client'",
    "tls-cipher": "the TLS cipher restriction would be skipped",
    "tls-ciphersuites": "the TLS 1.3 cipher-suite restriction would be skipped",
    "tls-groups": "the TLS key-exchange group restriction would be skipped",
    "tls-cert-profile": "the certificate strength profile would be skipped",
    "force-tls-key-material-export": "clients without TLS key export would be accepted",
    "pkcs12": "PKCS#12 bundles are not supported; use 'ca', 'cert' and 'key'",
    "pkcs11-providers": "PKCS#11 tokens are not supported",
    "pkcs11-id": "PKCS#11 tokens are not supported",
    "capath": "a CA directory is not supported; use 'ca'",
    "askpass": "encrypted private keys are not supported; decrypt the key first",
    "secret": "static-key mode is not supported (insecure, removed in OpenVPN 2.7)",
    "fragment": "it changes the data packet framing clients expect",
    "server-bridge": "tap bridging is not supported, only 'dev tun'",
    "client": "this is a client option; 'trivpn serve' needs a server configuration",
    "remote": "this is a client option; 'trivpn serve' needs a server configuration",
    "tls-client": "this is a client option; 'trivpn serve' needs a server configuration",
    "pull": "this is a client option; 'trivpn serve' needs a server configuration",
}


# ---- server option functions ------------------------------------------------------------

Handler = Callable[[Draft, int, list[str], bool], None]


def _mode(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    if args[0] == "p2p":
        raise Invalid("'trivpn serve' needs 'mode server' (p2p is one peer, not a server)")
    if args[0] != "server":
        raise Invalid(f"unknown mode {args[0][:40]!r} (server)")
    d.mode_server = True


def _server(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 2, 3)
    if len(args) == 3 and args[2] != "nopool":
        raise Invalid(f"unexpected {args[2][:40]!r} (only 'nopool' may follow)")
    d.server = (network(args[0], args[1], "network/netmask"), len(args) == 3)


def _server_ipv6(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    iface = ipv6_prefix(args[0], strict=False)
    if not 64 <= iface.network.prefixlen <= 124:
        raise Invalid(f"the network must be between /64 and /124, not /{iface.network.prefixlen}")
    d.server_ipv6 = iface.network


def _topology(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    if args[0] == "p2p":
        raise Invalid("topology p2p is not supported; use subnet (or net30)")
    if args[0] not in ("subnet", "net30"):
        raise Invalid(f"unknown topology {args[0][:40]!r} (subnet or net30)")
    d.topology = args[0]


def _proto(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.proto = parse_proto(args[0])


def _local(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.local = host(args[0])


def _lport(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.port = integer(args[0], 1, 65535)


def _ifconfig(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 2, 2)
    d.ifconfig = (ipv4(args[0]), ipv4(args[1]))


def _ifconfig_pool(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 2, 3)
    start, end = ipv4(args[0]), ipv4(args[1])
    if start > end:
        raise Invalid(f"start {start} is after end {end}")
    d.ifconfig_pool = (start, end, netmask(args[2]) if len(args) == 3 else None)


def _ifconfig_ipv6(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 2, 2)
    d.ifconfig_ipv6 = ipv6_prefix(args[0], strict=False)
    try:
        ipaddress.IPv6Address(args[1])
    except ValueError:
        raise Invalid(f"{args[1][:60]!r} is not an IPv6 address") from None


def _ifconfig_ipv6_pool(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.ifconfig_ipv6_pool = ipv6_prefix(args[0], strict=False)


def _dh(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    if args[0] == "none" and not inline:
        d.dh = "none"
        return
    text = read_content(d.base_dir, args[0], inline)
    if _PEM_DH not in text:
        raise Invalid("no PEM DH parameters found (or use 'dh none')")
    d.dh = text
    d.warnings.append(
        (
            line,
            f"option 'dh' (line {line}): DH parameters are not used; keys are exchanged with ECDHE",
        )
    )


def _tls_server(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 0, 0)
    d.tls_server = True


def _tls_auth(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1 if inline else 2)  # an inline key takes its direction from key-direction
    d.tls_auth = static_key(read_content(d.base_dir, args[0], inline))
    if len(args) == 2:
        d.key_direction = key_direction(args[1])


def _tls_crypt_v2(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 2)
    if len(args) == 2 and args[1] not in ("force-cookie", "allow-noncookie"):
        raise Invalid(f"unexpected {args[1][:40]!r} (force-cookie or allow-noncookie)")
    text = read_content(d.base_dir, args[0], inline)
    if "tls-crypt-v2 client key" in text:
        raise Invalid("this is a client key; a server needs the tls-crypt-v2 server key")
    begin = text.find(_TLS_CRYPT_V2_SERVER_BEGIN)
    end = text.find(_TLS_CRYPT_V2_SERVER_END, begin + 1)
    if begin < 0 or end < 0:
        raise Invalid("no 'OpenVPN tls-crypt-v2 server key' found")
    body = "".join(text[begin + len(_TLS_CRYPT_V2_SERVER_BEGIN) : end].split())
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("the tls-crypt-v2 server key is not valid base64") from None
    if len(raw) != _TLS_CRYPT_V2_SERVER_KEY_LEN:
        raise Invalid(
            f"the tls-crypt-v2 server key has {len(raw)} bytes, not {_TLS_CRYPT_V2_SERVER_KEY_LEN}"
        )
    d.tls_crypt_v2 = text


def _crl_verify(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1 if inline else 2)
    if len(args) == 2:
        if args[1] == "dir":
            raise Invalid("a CRL directory ('dir') is not supported; give one CRL file")
        raise Invalid(f"unexpected {args[1][:40]!r}")
    text = read_content(d.base_dir, args[0], inline)
    if _PEM_CRL not in text:
        raise Invalid("no PEM certificate revocation list found")
    d.crl_verify = text
    d.crl_verify_path = None if inline else path(d, args[0])


def _cd(d: Draft, line: int, args: list[str], inline: bool) -> None:
    # OpenVPN changes directory while parsing: later relative names start there.
    nargs(args, 1, 1)
    directory = Path(path(d, args[0]))
    if not directory.is_dir():
        raise Invalid(f"'{directory}' is not a directory")
    d.base_dir = directory


def _push(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    option = args[0].strip()
    if not option:
        raise Invalid("empty option")
    if "," in option:
        raise Invalid("a pushed option cannot contain ',' (it separates PUSH_REPLY options)")
    if not option.isprintable():
        raise Invalid("a pushed option must be printable text")
    d.push.append(option)


def _route(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 4)
    d.routes.append(network(args[0], args[1] if len(args) > 1 else "255.255.255.255", "route"))
    if len(args) > 2:
        d.warnings.append(
            (
                line,
                f"option 'route' (line {line}): gateway and metric are ignored (route into the tun)",
            )
        )


def _route_ipv6(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 3)
    try:
        d.routes_ipv6.append(IPv6Network(args[0]))
    except ValueError:
        raise Invalid(f"{args[0][:60]!r} is not an IPv6 network/bits") from None


def _flag(name: str) -> Handler:
    def handler(d: Draft, line: int, args: list[str], inline: bool) -> None:
        nargs(args, 0, 0)
        setattr(d, name, True)

    return handler


def _max_clients(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.max_clients = integer(args[0], 1, MAX_CLIENTS_LIMIT)


def _max_routes_per_client(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.max_routes_per_client = integer(args[0], 1, 2**20)


def _pool_persist(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 2)
    seconds = integer(args[1], 0, MAX_SECONDS) if len(args) == 2 else 600
    d.pool_persist = (path(d, args[0]), seconds)


def _client_config_dir(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.client_config_dir = path(d, args[0])


def _verify_client_cert(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    if args[0] not in ("none", "optional", "require"):
        raise Invalid(f"unknown mode {args[0][:40]!r} (none, optional or require)")
    d.verify_client_cert = args[0]


def _remote_cert_tls(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    if args[0] != "client":
        raise Invalid(f"a server can only check 'client' certificates, not {args[0][:40]!r}")
    d.remote_cert_tls = "client"


def _auth_user_pass_verify(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 2, 2)
    if args[1] not in ("via-file", "via-env"):
        raise Invalid(f"unknown method {args[1][:40]!r} (via-file or via-env)")
    d.auth_user_pass_verify = (command(args), args[1])


def _script(name: str) -> Handler:
    def handler(d: Draft, line: int, args: list[str], inline: bool) -> None:
        nargs(args, 1, 1)
        setattr(d, name, command(args))

    return handler


def _script_security(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.script_security = integer(args[0], 0, 3)


def _status(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 2)
    seconds = integer(args[1], 1, MAX_SECONDS) if len(args) == 2 else 60
    d.status = (path(d, args[0]), seconds)


def _status_version(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 0, 1)
    d.status_version = integer(args[0], 1, 3) if args else 1


def _user(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.user = host(args[0])


def _group(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 1, 1)
    d.group = host(args[0])


def _management(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 2, 3)
    if len(args) == 3 and args[2] == "stdin":
        raise Invalid("a password from 'stdin' is not supported; give a password file")
    password = path(d, args[2]) if len(args) == 3 else None
    if args[1] == "unix":
        d.management = (path(d, args[0]), None, password)
        return
    # an address or a name such as 'localhost', resolved when the socket is opened
    d.management = (host(args[0]), integer(args[1], 1, 65535), password)


def _connect_freq(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 2, 2)
    # as OpenVPN: both may be 0; 'N 0' is no limit, '0 SEC' refuses every new session
    count, period = integer(args[0], 0, 2**31), integer(args[1], 0, MAX_SECONDS)
    d.connect_freq = (count, period) if period else None


def _connect_freq_initial(d: Draft, line: int, args: list[str], inline: bool) -> None:
    nargs(args, 2, 2)
    d.connect_freq_initial = pair(args, 1, 2**31)


#: Options handled by an explicit server function.
SERVER: Mapping[str, Handler] = {
    "mode": _mode,
    "server": _server,
    "server-ipv6": _server_ipv6,
    "topology": _topology,
    "tls-server": _tls_server,
    "proto": _proto,
    "local": _local,
    "lport": _lport,
    "ifconfig": _ifconfig,
    "ifconfig-pool": _ifconfig_pool,
    "ifconfig-ipv6": _ifconfig_ipv6,
    "ifconfig-ipv6-pool": _ifconfig_ipv6_pool,
    "dh": _dh,
    "tls-auth": _tls_auth,
    "tls-crypt-v2": _tls_crypt_v2,
    "crl-verify": _crl_verify,
    "cd": _cd,
    "push": _push,
    "route": _route,
    "route-ipv6": _route_ipv6,
    "client-to-client": _flag("client_to_client"),
    "duplicate-cn": _flag("duplicate_cn"),
    "ccd-exclusive": _flag("ccd_exclusive"),
    "username-as-common-name": _flag("username_as_common_name"),
    "management-client-auth": _flag("management_client_auth"),
    "max-clients": _max_clients,
    "max-routes-per-client": _max_routes_per_client,
    "ifconfig-pool-persist": _pool_persist,
    "client-config-dir": _client_config_dir,
    "verify-client-cert": _verify_client_cert,
    "remote-cert-tls": _remote_cert_tls,
    "auth-user-pass-verify": _auth_user_pass_verify,
    "script-security": _script_security,
    "client-connect": _script("client_connect"),
    "client-disconnect": _script("client_disconnect"),
    "learn-address": _script("learn_address"),
    "status": _status,
    "status-version": _status_version,
    "user": _user,
    "group": _group,
    "management": _management,
    "connect-freq": _connect_freq,
    "connect-freq-initial": _connect_freq_initial,
    **SCRIPT_OPTIONS,
}
