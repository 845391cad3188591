"""Client profile (.ovpn) parser: OpenVPN 2.6 option syntax into a :class:`Profile`.

Theory of operation
-------------------
:func:`~trivpn.profile.options.iter_options` turns the text into option lines; each
line is dispatched on its name to one of four treatments:

1. **handled** - the option is parsed and validated into a :class:`Profile` field;
2. **silently accepted** (:data:`SILENT_OPTIONS`) - ignoring it is exactly right for
   our client (Windows-only knobs, script environment, buffer sizes, ...);
3. **refused** (:data:`UNSAFE_OPTIONS`) - the user asked for a security check or a
   transport we do not implement, and carrying on without it would silently weaken
   or redirect the connection: :class:`ConfigError`;
4. **everything else**, known or unknown - skipped with one warning line
   ``option 'X' (line N) is not supported and was ignored``.

Like OpenVPN, ``remote`` entries take ``port``/``rport``/``proto`` defaults wherever
those appear, later single-valued options override earlier ones, and when
``<connection>`` blocks exist the top-level ``remote`` lines are not used.  Only the
first ``<connection>`` is applied for now; every block is kept raw in
:attr:`Profile.connections`.  File arguments are read relative to ``base_dir``
(the profile's directory) or the current directory when it is None.

Every error is a one-line :class:`ConfigError` naming the line number.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trivpn.errors import ConfigError
from trivpn.profile.options import _iter_options, is_inline

__all__ = [
    "DEFAULT_DATA_CIPHERS",
    "SILENT_OPTIONS",
    "UNSAFE_OPTIONS",
    "HTTPProxyOptions",
    "Profile",
    "ProxySpec",
    "Remote",
    "load_profile",
    "parse_profile",
]

#: OpenVPN 2.6's default ``--data-ciphers``.
DEFAULT_DATA_CIPHERS = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
#: Default remote port (OpenVPN's ``OPENVPN_PORT``).
OPENVPN_PORT = 1194
DEFAULT_PROTO = "udp"
DEFAULT_AUTH = "SHA1"
#: OpenVPN's default ``--verb``.
DEFAULT_VERB = 1
#: ``--explicit-exit-notify`` without a count means 1 retry.
DEFAULT_EXPLICIT_EXIT_NOTIFY = 1
#: We refuse referenced files larger than this (certificates and keys are a few KiB).
MAX_REFERENCED_FILE_SIZE = 1 << 20
#: Largest ``verb`` OpenVPN knows.
MAX_VERB = 11
#: Upper bound for timer-like integers (seconds); far beyond anything sensible.
MAX_SECONDS = 10 * 365 * 24 * 3600
TUN_MTU_MIN = 100
TUN_MTU_MAX = 65535

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
_X509_TYPES = frozenset({"subject", "name", "name-prefix"})
_TLS_VERSIONS = frozenset({"1.0", "1.1", "1.2", "1.3"})

#: Options where ignoring is the correct client behaviour: accepted without a warning.
SILENT_OPTIONS = frozenset(
    {
        "allow-compression",  # we never compress; the compression options themselves are checked
        "auth-nocache",  # we never cache credentials to disk anyway
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
        "script-security",  # we run no scripts
        "setenv-safe",  # environment for scripts we never run
        "sndbuf",  # socket buffer tuning
        "suppress-timestamps",  # log formatting
        "tun-ipv6",  # obsolete no-op
        "windows-driver",  # Windows only
    }
)

#: Options we refuse: ignoring them would skip a check the user asked for, bypass a
#: transport they configured, or they need credentials/features we cannot provide.
UNSAFE_OPTIONS: dict[str, str] = {
    "tls-verify": "the certificate verification script would be skipped",
    "verify-hash": "certificate pinning would be skipped",
    "peer-fingerprint": "certificate pinning would be skipped",
    "crl-verify": "certificate revocation checks would be skipped",
    "remote-cert-ku": "the server certificate key-usage check would be skipped",
    "remote-cert-eku": "the server certificate extended-key-usage check would be skipped",
    "ns-cert-type": "removed in OpenVPN 2.5; use 'remote-cert-tls server'",
    "tls-cipher": "the TLS cipher restriction would be skipped",
    "tls-ciphersuites": "the TLS 1.3 cipher-suite restriction would be skipped",
    "tls-groups": "the TLS key-exchange group restriction would be skipped",
    "tls-cert-profile": "the certificate strength profile would be skipped",
    "pkcs12": "PKCS#12 bundles are not supported; convert to <ca>, <cert> and <key>",
    "pkcs11-providers": "PKCS#11 tokens are not supported",
    "pkcs11-id": "PKCS#11 tokens are not supported",
    "cryptoapicert": "the Windows certificate store is not supported",
    "management-external-key": "external keys via the management interface are not supported",
    "management-external-cert": "external certificates via the management interface are not supported",
    "askpass": "encrypted private keys are not supported; decrypt the key first",
    "capath": "a CA directory is not supported; use 'ca'",
    "secret": "static-key mode is not supported (it is insecure and removed in OpenVPN 2.7)",
    "fragment": "it changes the data packet framing and the server would not understand us",
    "pull-filter": "server-pushed settings you filtered out would be applied",
    "route-nopull": "server-pushed routes you refused would be applied",
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

#: ``socks-proxy`` port when none is given (OpenVPN's default).
SOCKS_PROXY_PORT = 1080
#: ``http-proxy`` third argument values that are not an auth file.
_HTTP_PROXY_AUTO = frozenset({"auto", "auto-nct"})
#: ``http-proxy`` auth methods we implement (NTLM and Digest are not).
_HTTP_PROXY_METHODS = frozenset({"none", "basic"})
#: OpenVPN's ``MAX_CUSTOM_HTTP_HEADER``.
MAX_CUSTOM_HTTP_HEADERS = 10

_PEM_CERT = "-----BEGIN CERTIFICATE-----"
_PEM_KEY_SUFFIX = "PRIVATE KEY-----"
_STATIC_KEY = "-----BEGIN OpenVPN Static key V1-----"


@dataclass(frozen=True, slots=True)
class Remote:
    """One server address to try, with the normalized transport name."""

    host: str
    port: int
    proto: str


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """An HTTP or SOCKS5 proxy that the TCP connection to the server goes through.

    ``auth`` is ``none``, ``basic``, ``auto`` or ``auto-nct`` for HTTP and ``none`` or
    ``userpass`` for SOCKS5; ``ask`` means the credentials must be entered by the user
    (auth file ``stdin``, or a file with a username only).
    """

    host: str
    port: int
    auth: str = "none"
    credentials: tuple[str, str] | None = None
    ask: bool = False


@dataclass(frozen=True, slots=True)
class HTTPProxyOptions:
    """``http-proxy-option``: HTTP version, User-Agent and extra request headers."""

    version: str = "1.0"
    agent: str | None = None
    headers: tuple[tuple[str, str | None], ...] = ()  # (name, value) or (whole line, None)


@dataclass(slots=True)
class Profile:
    """Everything trivpn needs from a client profile, validated.

    ``auth_user_pass`` is ``None`` when the profile has no ``auth-user-pass``,
    ``(username, password)`` when both come from an inline block or a file, and
    ``True`` when the user must be prompted (no file, or a file with only a username;
    a warning then says so).
    """

    remotes: list[Remote]
    dev_type: str = "tun"
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    tls_auth: str | None = None
    key_direction: int | None = None
    tls_crypt: str | None = None
    tls_crypt_v2: str | None = None  # the client key text (Kc + wrapped WKc)
    remote_cert_tls: str | None = None
    verify_x509_name: tuple[str, str] | None = None
    data_ciphers: list[str] = field(default_factory=lambda: list(DEFAULT_DATA_CIPHERS))
    cipher: str | None = None
    data_ciphers_fallback: str | None = None
    auth: str = DEFAULT_AUTH
    tls_version_min: str | None = None
    verb: int = DEFAULT_VERB
    pull: bool = False
    tls_client: bool = False
    persist_tun: bool = False
    persist_key: bool = False
    nobind: bool = False
    resolv_retry: float | None = None
    mute_replay_warnings: bool = False
    compression: str | None = None
    auth_user_pass: tuple[str, str] | None | bool = None
    tun_mtu: int | None = None
    ping: int | None = None
    ping_restart: int | None = None
    ping_exit: int | None = None
    keepalive: tuple[int, int] | None = None
    reneg_sec: int | None = None
    reneg_bytes: int | None = None
    reneg_pkts: int | None = None
    connect_retry: tuple[int, int] | None = None  # (initial delay, max delay) seconds
    connect_retry_max: int | None = None  # full passes over the remotes; None = unlimited
    server_poll_timeout: int | None = None  # per address: seconds to get an answer
    hand_window: int | None = None
    remote_random: bool = False
    local: str | None = None  # `local` address to bind (an IP literal)
    lport: int | None = None  # `lport` / `port` for binding when `bind` is in effect
    bind: bool = False  # bind the socket (set by `local`, `lport`, `bind`); `nobind` clears it
    static_challenge: tuple[str, bool] | None = None  # (prompt text, echo the response)
    explicit_exit_notify: int | None = None
    http_proxy: ProxySpec | None = None
    socks_proxy: ProxySpec | None = None
    http_proxy_options: HTTPProxyOptions = field(default_factory=HTTPProxyOptions)
    connections: list[dict[str, list[str]]] = field(default_factory=list)
    #: profiles for the 2nd, 3rd... <connection> blocks, tried in order after this one
    alternatives: list[Profile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: str | None = None


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and parse the profile at ``path``; its directory anchors relative files."""
    p = Path(path)
    try:
        data = _read_limited(p)
    except OSError as exc:
        raise ConfigError(f"cannot read profile '{p}': {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"profile '{p}' is not valid UTF-8 text") from None
    return parse_profile(text, base_dir=p.parent, source=str(p))


def parse_profile(text: str, *, base_dir: Path | None = None, source: str | None = None) -> Profile:
    """Parse profile ``text``; raises :class:`ConfigError` with a one-line message."""
    try:
        profile = _Builder(base_dir).build(text, source)
        # each further <connection> block is its own complete profile (global options plus
        # that block's), tried in order after the first
        for index in range(1, len(profile.connections)):
            alt = _Builder(base_dir, connection=index).build(text, source)
            alt.warnings = []
            profile.alternatives.append(alt)
        if profile.alternatives:
            profile.warnings = [w for w in profile.warnings if "only the first <connection>" not in w]
        return profile
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from None
        raise


def _read_limited(path: Path) -> bytes:
    """Read a regular file of bounded size (never block on a FIFO or device)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(0, "not a regular file")
    with open(path, "rb") as f:
        data = f.read(MAX_REFERENCED_FILE_SIZE + 1)
    if len(data) > MAX_REFERENCED_FILE_SIZE:
        raise OSError(0, f"larger than {MAX_REFERENCED_FILE_SIZE} bytes")
    return data


def _err(line: int, name: str, msg: str) -> ConfigError:
    return ConfigError(f"line {line}: option '{name}': {msg}")


@dataclass(slots=True)
class _RawRemote:
    line: int
    host: str
    port: str | None
    proto: str | None


class _Builder:
    """Mutable state while walking the option lines of one profile."""

    def __init__(self, base_dir: Path | None, connection: int = 0) -> None:
        self.base_dir = base_dir
        #: which <connection> block this builder applies (0 = the first)
        self.connection = connection
        self.p = Profile(remotes=[])
        self.dev: str | None = None
        self.dev_type: str | None = None
        self.dev_line = 0
        self.global_port: str | None = None
        self.global_proto: str | None = None
        self.top_remotes: list[_RawRemote] = []
        # first <connection> block: its own remote and port/proto overrides
        self.conn_remotes: list[_RawRemote] = []
        self.conn_port: str | None = None
        self.conn_proto: str | None = None
        self.in_conn = False
        self.conn_count = 0
        self.ignore_unknown: set[str] = set()
        self.tls_auth_line = 0
        self.tls_crypt_line = 0
        self.compression_line = 0
        self.http_proxy_line = 0
        self.socks_proxy_line = 0
        self.http_proxy_option_line = 0
        self.http_proxy_user_pass: tuple[str, str] | None = None
        self.handlers: dict[str, Callable[[int, str, list[str], bool], None]] = {
            "client": self._client,
            "pull": self._flag,
            "tls-client": self._flag,
            "nobind": self._flag,
            "persist-tun": self._flag,
            "persist-key": self._flag,
            "mute-replay-warnings": self._flag,
            "dev": self._dev,
            "dev-type": self._dev_type,
            "proto": self._proto,
            "remote": self._remote,
            "port": self._port,
            "rport": self._port,
            "ca": self._pem,
            "cert": self._pem,
            "key": self._pem,
            "tls-auth": self._tls_auth,
            "tls-crypt": self._tls_crypt,
            "tls-crypt-v2": self._tls_crypt_v2,
            "key-direction": self._key_direction,
            "remote-cert-tls": self._remote_cert_tls,
            "verify-x509-name": self._verify_x509_name,
            "data-ciphers": self._data_ciphers,
            "ncp-ciphers": self._data_ciphers,
            "cipher": self._cipher,
            "data-ciphers-fallback": self._cipher,
            "auth": self._auth,
            "tls-version-min": self._tls_version_min,
            "verb": self._verb,
            "resolv-retry": self._resolv_retry,
            "comp-lzo": self._comp_lzo,
            "compress": self._compress,
            "auth-user-pass": self._auth_user_pass,
            "tun-mtu": self._tun_mtu,
            "ping": self._timer,
            "ping-restart": self._timer,
            "ping-exit": self._timer,
            "keepalive": self._keepalive,
            "reneg-sec": self._reneg_sec,
            "reneg-bytes": self._int_attr,
            "reneg-pkts": self._int_attr,
            "connect-retry-max": self._int_attr,
            "server-poll-timeout": self._int_attr,
            "connect-timeout": self._int_attr,
            "hand-window": self._int_attr,
            "connect-retry": self._connect_retry,
            "remote-random": self._remote_random,
            "local": self._local,
            "static-challenge": self._static_challenge,
            "lport": self._lport,
            "bind": self._bind,
            "explicit-exit-notify": self._explicit_exit_notify,
            "setenv": self._setenv,
            "ignore-unknown-option": self._ignore_unknown_option,
            "mode": self._mode,
            "http-proxy": self._http_proxy,
            "http-proxy-option": self._http_proxy_option,
            "http-proxy-user-pass": self._http_proxy_user_pass,
            "socks-proxy": self._socks_proxy,
            "<connection>": self._connection,
        }

    # ---- driver ---------------------------------------------------------------------

    def build(self, text: str, source: str | None) -> Profile:
        p = self.p
        p.source = source
        for line, tokens in _iter_options(text, 1):
            self.apply(line, tokens)
        self._finish()
        return p

    def apply(self, line: int, tokens: list[str]) -> None:
        inline = is_inline(tokens)
        name = tokens[0]
        args = tokens[1:]
        if inline and name != "<connection>":
            name = name[1:-1]
        if self.in_conn and name not in CONNECTION_OPTIONS:
            raise _err(line, name, "is not allowed inside a <connection> block")
        handler = self.handlers.get(name)
        if handler is not None:
            handler(line, name, args, inline)
        elif name in UNSAFE_OPTIONS:
            raise _err(line, name, f"is not supported: {UNSAFE_OPTIONS[name]}")
        elif name in SILENT_OPTIONS or name in self.ignore_unknown:
            return
        else:
            self.warn(line, name)

    def warn(self, line: int, name: str) -> None:
        self.p.warnings.append(f"option '{name}' (line {line}) is not supported and was ignored")

    # ---- argument helpers -----------------------------------------------------------

    @staticmethod
    def nargs(line: int, name: str, args: list[str], lo: int, hi: int) -> None:
        if not lo <= len(args) <= hi:
            if lo == hi:
                want = f"exactly {lo} argument{'s' if lo != 1 else ''}"
            else:
                want = f"{lo} to {hi} arguments"
            raise _err(line, name, f"takes {want}, got {len(args)}")

    @staticmethod
    def integer(line: int, name: str, value: str, lo: int, hi: int) -> int:
        if not value.isascii() or not value.isdigit():
            raise _err(line, name, f"{value!r} is not a number")
        n = int(value)
        if not lo <= n <= hi:
            raise _err(line, name, f"{n} is out of range {lo}..{hi}")
        return n

    def content(self, line: int, name: str, arg: str, inline: bool) -> str:
        """The text of an inline block, or of the file the argument names."""
        if inline:
            return arg
        path = Path(arg)
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        try:
            data = _read_limited(path)
        except OSError as exc:
            raise _err(line, name, f"cannot read '{path}': {exc.strerror or exc}") from None
        except ValueError:
            raise _err(line, name, f"invalid file name {arg!r}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _err(line, name, f"'{path}' is not a text (PEM) file") from None

    # ---- handlers -------------------------------------------------------------------

    def _flag(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 0, 0)
        setattr(self.p, name.replace("-", "_"), True)

    def _client(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 0, 0)
        self.p.pull = True
        self.p.tls_client = True

    def _mode(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        if args[0] != "p2p":
            raise _err(line, name, "is not supported: this is a server configuration")

    def _dev(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        self.dev = args[0]
        self.dev_line = line

    def _dev_type(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        if args[0] not in ("tun", "tap"):
            raise _err(line, name, f"unknown device type {args[0]!r} (use tun)")
        self.dev_type = args[0]
        self.dev_line = line

    def _proto_value(self, line: int, name: str, value: str) -> str:
        if value in _PROTO_SERVER:
            raise _err(line, name, f"{value!r} is for servers; a client uses tcp or udp")
        proto = _PROTO_NORMAL.get(value)
        if proto is None:
            raise _err(line, name, f"unknown protocol {value!r}")
        return proto

    def _proto(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        proto = self._proto_value(line, name, args[0])
        if self.in_conn:
            self.conn_proto = proto
        else:
            self.global_proto = proto

    def _port_value(self, line: int, name: str, value: str) -> str:
        self.integer(line, name, value, 1, 65535)
        return value

    def _remote(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 3)
        host = args[0]
        if not host:
            raise _err(line, name, "empty host name")
        port = self._port_value(line, name, args[1]) if len(args) > 1 else None
        proto = self._proto_value(line, name, args[2]) if len(args) > 2 else None
        raw = _RawRemote(line, host, port, proto)
        if self.in_conn:
            if self.conn_remotes:
                raise _err(line, name, "a <connection> block may hold only one 'remote'")
            self.conn_remotes.append(raw)
        else:
            self.top_remotes.append(raw)

    def _port(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        port = self._port_value(line, name, args[0])
        if self.in_conn:
            self.conn_port = port
        else:
            self.global_port = port

    def _pem(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        text = self.content(line, name, args[0], inline)
        if name == "key":
            if _PEM_KEY_SUFFIX not in text:
                raise _err(line, name, "no PEM private key found")
        elif _PEM_CERT not in text:
            raise _err(line, name, "no PEM certificate found")
        setattr(self.p, name, text)

    def _static_key(self, line: int, name: str, arg: str, inline: bool) -> str:
        text = self.content(line, name, arg, inline)
        if _STATIC_KEY not in text:
            raise _err(line, name, "no 'OpenVPN Static key V1' found")
        return text

    def _tls_auth(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1 if inline else 2)
        self.p.tls_auth = self._static_key(line, name, args[0], inline)
        self.tls_auth_line = line
        if len(args) == 2:
            self.p.key_direction = self._direction(line, name, args[1])

    def _tls_crypt(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        self.p.tls_crypt = self._static_key(line, name, args[0], inline)
        self.tls_crypt_line = line

    def _tls_crypt_v2(self, line: int, name: str, args: list[str], inline: bool) -> None:
        from trivpn.controlchannel.wrap import TLSCryptV2ClientKey

        self.nargs(line, name, args, 1, 2)
        text = self.content(line, name, args[0], inline)
        try:
            TLSCryptV2ClientKey.from_text(text)
        except ConfigError as exc:
            raise _err(line, name, str(exc)) from None
        self.p.tls_crypt_v2 = text
        self.tls_crypt_line = line

    def _direction(self, line: int, name: str, value: str) -> int:
        if value not in ("0", "1"):
            raise _err(line, name, f"key direction must be 0 or 1, not {value!r}")
        return int(value)

    def _key_direction(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        self.p.key_direction = self._direction(line, name, args[0])

    def _remote_cert_tls(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        if args[0] != "server":
            raise _err(
                line, name, f"a client can only check 'server' certificates, not {args[0]!r}"
            )
        self.p.remote_cert_tls = args[0]

    def _verify_x509_name(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 2)
        kind = args[1] if len(args) == 2 else "subject"
        if not args[0]:
            raise _err(line, name, "empty name")
        if kind not in _X509_TYPES:
            raise _err(line, name, f"unknown type {kind!r} (subject, name or name-prefix)")
        self.p.verify_x509_name = (args[0], kind)

    @staticmethod
    def _cipher_name(line: int, name: str, value: str) -> str:
        if not value or not all(c.isascii() and (c.isalnum() or c in "-_") for c in value):
            raise _err(line, name, f"invalid cipher name {value!r}")
        return value.upper()

    def _data_ciphers(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        # A leading '?' marks a cipher as optional; we simply list it.
        names = [self._cipher_name(line, name, c.removeprefix("?")) for c in args[0].split(":")]
        self.p.data_ciphers = names

    def _cipher(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        value = self._cipher_name(line, name, args[0])
        if name == "cipher":
            self.p.cipher = value
        else:
            self.p.data_ciphers_fallback = value

    def _auth(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        self.p.auth = self._cipher_name(line, name, args[0])

    def _tls_version_min(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 2)
        if args[0] not in _TLS_VERSIONS:
            raise _err(line, name, f"unknown TLS version {args[0]!r}")
        if len(args) == 2 and args[1] != "or-highest":
            raise _err(line, name, f"unexpected {args[1]!r} (only 'or-highest' may follow)")
        self.p.tls_version_min = args[0]

    def _verb(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        self.p.verb = self.integer(line, name, args[0], 0, MAX_VERB)

    def _resolv_retry(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        if args[0] == "infinite":
            self.p.resolv_retry = math.inf
        else:
            self.p.resolv_retry = float(self.integer(line, name, args[0], 0, MAX_SECONDS))

    def _no_compression(self, line: int, name: str, what: str) -> ConfigError:
        return _err(
            line,
            name,
            f"compression ({what}) is not supported: compressing before encrypting "
            "leaks plaintext (VORACLE)",
        )

    def _comp_lzo(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 0, 1)
        mode = args[0] if args else "adaptive"
        if mode == "no":
            self.p.compression = "lzo-no"
        elif mode in ("yes", "adaptive"):
            raise self._no_compression(line, name, f"comp-lzo {mode}")
        else:
            raise _err(line, name, f"unknown mode {mode!r} (yes, no or adaptive)")

    def _compress(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 0, 1)
        alg = args[0] if args else "stub"
        if alg in ("stub", "stub-v2"):
            self.p.compression = alg
        elif alg in ("lzo", "lz4", "lz4-v2"):
            raise self._no_compression(line, name, alg)
        elif alg == "migrate":
            self.warn(line, "compress migrate")
        else:
            raise _err(line, name, f"unknown algorithm {alg!r}")

    def _auth_user_pass(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 0, 1)
        if not args:
            self.p.auth_user_pass = True
            return
        text = self.content(line, name, args[0], inline)
        lines = [ln.rstrip("\r") for ln in text.split("\n")]
        lines = [ln for ln in lines if ln.strip()]
        if not lines:
            raise _err(line, name, "no username found")
        if len(lines) == 1:
            self.p.auth_user_pass = True
            self.p.warnings.append(
                f"option 'auth-user-pass' (line {line}) gives no password; it must be entered"
            )
            return
        self.p.auth_user_pass = (lines[0], lines[1])

    def _tun_mtu(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 2)
        self.p.tun_mtu = self.integer(line, name, args[0], TUN_MTU_MIN, TUN_MTU_MAX)

    def _timer(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        setattr(self.p, name.replace("-", "_"), self.integer(line, name, args[0], 0, MAX_SECONDS))

    def _keepalive(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 2, 2)
        interval = self.integer(line, name, args[0], 0, MAX_SECONDS)
        timeout = self.integer(line, name, args[1], 0, MAX_SECONDS)
        self.p.keepalive = (interval, timeout)

    def _reneg_sec(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 2)
        self.p.reneg_sec = self.integer(line, name, args[0], 0, MAX_SECONDS)
        if len(args) == 2:
            self.integer(line, name, args[1], 0, MAX_SECONDS)

    _INT_ATTRS = {
        "reneg-bytes": ("reneg_bytes", 2**62),
        "reneg-pkts": ("reneg_pkts", 2**62),
        "connect-retry-max": ("connect_retry_max", 2**31),
        "server-poll-timeout": ("server_poll_timeout", MAX_SECONDS),
        "connect-timeout": ("server_poll_timeout", MAX_SECONDS),
        "hand-window": ("hand_window", MAX_SECONDS),
    }

    def _int_attr(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        attr, hi = self._INT_ATTRS[name]
        setattr(self.p, attr, self.integer(line, name, args[0], 0, hi))

    def _connect_retry(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 2)
        first = self.integer(line, name, args[0], 0, MAX_SECONDS)
        cap = self.integer(line, name, args[1], 0, MAX_SECONDS) if len(args) == 2 else 300
        self.p.connect_retry = (first, max(first, cap))

    def _static_challenge(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 2, 3)
        if args[1] not in ("0", "1"):
            raise _err(line, name, f"echo flag must be 0 or 1, not {args[1][:20]!r}")
        self.p.static_challenge = (args[0], args[1] == "1")

    def _local(self, line: int, name: str, args: list[str], inline: bool) -> None:
        import ipaddress

        self.nargs(line, name, args, 1, 1)
        try:
            ipaddress.ip_address(args[0])
        except ValueError:
            raise _err(line, name, f"{args[0][:60]!r} must be an IP address") from None
        self.p.local = args[0]
        self.p.bind = True

    def _lport(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        self.p.lport = self.integer(line, name, args[0], 0, 65535)
        self.p.bind = True

    def _bind(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 0, 1)
        self.p.bind = True

    def _remote_random(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 0, 0)
        self.p.remote_random = True

    def _explicit_exit_notify(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 0, 1)
        if args:
            self.p.explicit_exit_notify = self.integer(line, name, args[0], 0, MAX_SECONDS)
        else:
            self.p.explicit_exit_notify = DEFAULT_EXPLICIT_EXIT_NOTIFY

    def _setenv(self, line: int, name: str, args: list[str], inline: bool) -> None:
        # `setenv opt OPTION ...` asks for OPTION to be applied if it is known;
        # any other setenv only feeds scripts, which we never run.
        if len(args) >= 2 and args[0] == "opt":
            if args[1].startswith("<"):
                raise _err(line, name, f"cannot apply inline tag {args[1]!r}")
            self.apply(line, args[1:])

    def _ignore_unknown_option(self, line: int, name: str, args: list[str], inline: bool) -> None:
        if not args:
            raise _err(line, name, "needs at least one option name")
        self.ignore_unknown.update(a.removeprefix("--") for a in args)

    def _proxy_credentials(
        self, line: int, name: str, arg: str, inline: bool
    ) -> tuple[tuple[str, str] | None, bool]:
        """(credentials, ask) from a proxy auth file: user and password lines, or 'stdin'."""
        if arg == "stdin" and not inline:
            return None, True
        text = self.content(line, name, arg, inline)
        lines = [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]
        if not lines:
            raise _err(line, name, "no username found in the proxy auth file")
        if len(lines) == 1:
            self.p.warnings.append(
                f"option '{name}' (line {line}) gives no proxy password; it must be entered"
            )
            return None, True
        return (lines[0], lines[1]), False

    def _proxy_host_port(self, line: int, name: str, host: str, port: str) -> tuple[str, int]:
        if not host:
            raise _err(line, name, "empty proxy host name")
        return host, self.integer(line, name, port, 1, 65535)

    def _http_proxy(self, line: int, name: str, args: list[str], inline: bool) -> None:
        if len(args) < 2:
            raise _err(line, name, "needs the proxy host and port")
        self.nargs(line, name, args, 2, 4)
        host, port = self._proxy_host_port(line, name, args[0], args[1])
        auth, credentials, ask = "none", None, False
        if len(args) >= 3:
            if args[2] in _HTTP_PROXY_AUTO:
                if len(args) == 4:
                    raise _err(line, name, f"no auth method may follow {args[2]!r}")
                auth = args[2]
            else:
                auth = args[3].lower() if len(args) == 4 else "basic"
                if auth not in _HTTP_PROXY_METHODS:
                    raise _err(
                        line, name, f"proxy auth method {args[3]!r} is not supported (basic or none)"
                    )
                if auth == "basic":
                    credentials, ask = self._proxy_credentials(line, name, args[2], False)
        self.p.http_proxy = ProxySpec(host, port, auth, credentials, ask)
        self.http_proxy_line = line

    def _http_proxy_user_pass(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 1)
        credentials, ask = self._proxy_credentials(line, name, args[0], inline)
        if credentials is None or ask:
            raise _err(line, name, "needs a username line and a password line")
        self.http_proxy_user_pass = credentials

    def _http_proxy_option(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 2, 3)
        what = args[0]
        opts = self.p.http_proxy_options
        if any(c in a for a in args for c in "\r\n\0") or not all(a.isascii() for a in args):
            raise _err(line, name, "contains characters an HTTP header cannot carry")
        if what == "VERSION" and len(args) == 2:
            if args[1] not in ("1.0", "1.1"):
                raise _err(line, name, f"HTTP version must be 1.0 or 1.1, not {args[1]!r}")
            self.p.http_proxy_options = HTTPProxyOptions(args[1], opts.agent, opts.headers)
        elif what == "AGENT" and len(args) == 2:
            self.p.http_proxy_options = HTTPProxyOptions(opts.version, args[1], opts.headers)
        elif what in ("CUSTOM-HEADER", "EXT1", "EXT2"):
            if len(opts.headers) >= MAX_CUSTOM_HTTP_HEADERS:
                raise _err(line, name, f"at most {MAX_CUSTOM_HTTP_HEADERS} custom headers")
            header = (args[1], args[2] if len(args) == 3 else None)
            self.p.http_proxy_options = HTTPProxyOptions(
                opts.version, opts.agent, (*opts.headers, header)
            )
        else:
            raise _err(
                line, name, f"unknown or malformed {what!r} (VERSION, AGENT or CUSTOM-HEADER)"
            )
        self.http_proxy_option_line = line

    def _socks_proxy(self, line: int, name: str, args: list[str], inline: bool) -> None:
        self.nargs(line, name, args, 1, 3)
        host, port = self._proxy_host_port(
            line, name, args[0], args[1] if len(args) > 1 else str(SOCKS_PROXY_PORT)
        )
        credentials, ask = None, False
        if len(args) == 3:
            credentials, ask = self._proxy_credentials(line, name, args[2], False)
        auth = "userpass" if credentials is not None or ask else "none"
        self.p.socks_proxy = ProxySpec(host, port, auth, credentials, ask)
        self.socks_proxy_line = line

    def _connection(self, line: int, name: str, args: list[str], inline: bool) -> None:
        if self.in_conn:
            raise _err(line, "connection", "blocks cannot be nested")
        self.conn_count += 1
        raw: dict[str, list[str]] = {}
        first = self.conn_count == self.connection + 1
        self.in_conn = first
        try:
            for sub_line, tokens in _iter_options(args[0], line + 1):
                sub_name = tokens[0]
                if is_inline(tokens):
                    sub_name = sub_name[1:-1]
                if sub_name not in CONNECTION_OPTIONS:
                    raise _err(sub_line, sub_name, "is not allowed inside a <connection> block")
                raw[sub_name] = tokens[1:]
                if first:
                    self.apply(sub_line, tokens)
        finally:
            self.in_conn = False
        self.p.connections.append(raw)
        if first and not self.conn_remotes:
            raise _err(line, "connection", "block has no 'remote'")
        if not first:
            self.p.warnings.append(
                f"<connection> block (line {line}) is not supported and was ignored: "
                "only the first <connection> is used"
            )

    # ---- final checks ---------------------------------------------------------------

    def _finish(self) -> None:
        p = self.p
        if self.dev is None:
            raise ConfigError("missing 'dev tun': the profile must name a tun device")
        kind = self.dev_type
        if kind is None:
            if self.dev.startswith("tun"):
                kind = "tun"
            elif self.dev.startswith("tap"):
                kind = "tap"
            else:
                raise _err(
                    self.dev_line,
                    "dev",
                    f"cannot tell the type of {self.dev!r}; add 'dev-type tun'",
                )
        if kind == "tap":
            raise _err(self.dev_line, "dev", "tap (layer 2) devices are not supported, only tun")
        p.dev_type = kind

        if not (p.tls_client and p.pull):
            raise ConfigError(
                "not a client profile: add 'client' (or both 'tls-client' and 'pull')"
            )
        if p.ca is None:
            raise ConfigError("missing 'ca': the server's CA certificate is required")
        if (p.cert is None) != (p.key is None):
            missing = "key" if p.key is None else "cert"
            raise ConfigError(f"missing '{missing}': 'cert' and 'key' must be given together")
        wraps = [p.tls_auth is not None, p.tls_crypt is not None, p.tls_crypt_v2 is not None]
        if sum(wraps) > 1 and p.tls_crypt_v2 is not None:
            raise ConfigError("only one of 'tls-auth', 'tls-crypt' and 'tls-crypt-v2' may be used")
        if p.tls_auth is not None and p.tls_crypt is not None:
            raise _err(
                max(self.tls_auth_line, self.tls_crypt_line),
                "tls-crypt" if self.tls_crypt_line > self.tls_auth_line else "tls-auth",
                "'tls-auth' and 'tls-crypt' cannot be used together",
            )

        if self.conn_count:
            chosen = self.conn_remotes
            port_default = self.conn_port or self.global_port
            proto_default = self.conn_proto or self.global_proto
            for r in self.top_remotes:
                p.warnings.append(
                    f"option 'remote' (line {r.line}) is ignored because <connection> blocks are present"
                )
        else:
            chosen = self.top_remotes
            port_default = self.global_port
            proto_default = self.global_proto
        if not chosen:
            raise ConfigError("missing 'remote': the profile must name a server")
        self._finish_proxy(chosen, proto_default)
        p.remotes = [
            Remote(
                host=r.host,
                port=int(r.port or port_default or OPENVPN_PORT),
                proto=r.proto or proto_default or DEFAULT_PROTO,
            )
            for r in chosen
        ]

    def _finish_proxy(self, chosen: list[_RawRemote], proto_default: str | None) -> None:
        """Proxies carry TCP only, one kind at a time (OpenVPN refuses the same)."""
        p = self.p
        if self.http_proxy_option_line and p.http_proxy is None:
            raise _err(
                self.http_proxy_option_line,
                "http-proxy-option",
                "is given but there is no 'http-proxy'",
            )
        if p.http_proxy is not None and self.http_proxy_user_pass is not None:
            spec = p.http_proxy
            if spec.credentials is None:
                auth = "basic" if spec.auth == "none" else spec.auth
                p.http_proxy = ProxySpec(spec.host, spec.port, auth, self.http_proxy_user_pass)
        if p.http_proxy is None and p.socks_proxy is None:
            return
        if p.http_proxy is not None and p.socks_proxy is not None:
            raise _err(
                max(self.http_proxy_line, self.socks_proxy_line),
                "socks-proxy" if self.socks_proxy_line > self.http_proxy_line else "http-proxy",
                "'http-proxy' and 'socks-proxy' cannot be used together",
            )
        name = "http-proxy" if p.http_proxy is not None else "socks-proxy"
        line = self.http_proxy_line or self.socks_proxy_line
        for r in chosen:
            proto = r.proto or proto_default or DEFAULT_PROTO
            if not proto.startswith("tcp"):
                raise _err(
                    line,
                    name,
                    f"a proxy carries TCP only, but 'remote {r.host}' (line {r.line}) uses "
                    f"{proto}: add 'proto tcp'",
                )
