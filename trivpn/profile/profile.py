"""Client profile (.ovpn) parser: OpenVPN 2.6 option syntax into a :class:`Profile`.

How each option is treated, and how ``<connection>`` blocks become overlays, is told
in :mod:`trivpn.profile.table`.  This module walks the text once, then builds the
profiles: without ``<connection>`` blocks, one from the global options; with blocks,
the first block's profile is the result and every further block's profile is in
:attr:`Profile.alternatives`, tried in order after it.

Like OpenVPN, ``remote`` entries take ``port``/``rport``/``proto`` defaults wherever
those appear, later single-valued options override earlier ones, and when
``<connection>`` blocks exist the top-level ``remote`` lines are not used.  File
arguments are read relative to ``base_dir`` (the profile's directory) or the current
directory when it is None.  Every error is a one-line :class:`ConfigError`; errors in
option lines come in text order and name the line.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path

from trivpn.errors import ConfigError
from trivpn.profile.checks import Invalid, Unsupported, err, read_limited
from trivpn.profile.model import (
    DEFAULT_DATA_CIPHERS,
    DEFAULT_PROTO,
    OPENVPN_PORT,
    HTTPProxyOptions,
    Profile,
    ProxySpec,
    Remote,
)
from trivpn.profile.options import _iter_options, is_inline
from trivpn.profile.scope import Scope
from trivpn.profile.special import MAX_CUSTOM_HTTP_HEADERS, PRIVATE_FILES, SPECIAL, key_mode_warning
from trivpn.profile.table import CONNECTION_OPTIONS, SILENT_OPTIONS, TABLE, UNSAFE_OPTIONS

__all__ = [
    "CONNECTION_OPTIONS",
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


def load_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and parse the profile at ``path``; its directory anchors relative files."""
    p = Path(path)
    try:
        data = read_limited(p)
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
        parser = _Parser(base_dir)
        parser.walk(text)
        return parser.profile(source)
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from None
        raise


class _Parser:
    """One walk over the option lines: the global scope plus one scope per block."""

    def __init__(self, base_dir: Path | None) -> None:
        self.base_dir = base_dir
        self.top = Scope()
        #: where option lines go now: ``top``, or the block being read
        self.scope = self.top
        self.blocks: list[Scope] = []
        #: every block's options as written (Profile.connections)
        self.raw_blocks: list[dict[str, list[str]]] = []
        self.ignore_unknown: set[str] = set()

    @property
    def in_block(self) -> bool:
        return self.scope is not self.top

    def walk(self, text: str) -> None:
        for line, tokens in _iter_options(text, 1):
            if tokens[0] == "<connection>":  # iter_options yields it only as a block
                self.block(line, tokens[1])
            else:
                self.apply(line, tokens)

    def block(self, line: int, body: str) -> None:
        """Parse one ``<connection>`` block into a scope of its own."""
        scope = Scope()
        raw: dict[str, list[str]] = {}
        self.scope = scope
        try:
            for sub_line, tokens in _iter_options(body, line + 1):
                self.apply(sub_line, tokens)
                raw[tokens[0][1:-1] if is_inline(tokens) else tokens[0]] = tokens[1:]
        finally:
            self.scope = self.top
        if not scope.extra.raw_remotes:
            raise err(line, "connection", "block has no 'remote'")
        self.blocks.append(scope)
        self.raw_blocks.append(raw)

    def apply(self, line: int, tokens: list[str]) -> None:
        """Treat one option line (see the table module for the order of treatments)."""
        inline = is_inline(tokens)
        name = tokens[0][1:-1] if inline else tokens[0]
        args = tokens[1:]
        if self.in_block and name not in CONNECTION_OPTIONS:
            raise err(line, name, "is not allowed inside a <connection> block")
        scope = self.scope
        try:
            if (simple := TABLE.get(name)) is not None:
                for field, value in simple.assignments(args, inline, self.base_dir):
                    scope.set(field, value)
            elif (special := SPECIAL.get(name)) is not None:
                special(self, line, name, args, inline)
            elif name in UNSAFE_OPTIONS:
                raise Invalid(f"is not supported: {UNSAFE_OPTIONS[name]}")
            elif name not in SILENT_OPTIONS and name not in self.ignore_unknown:
                self.warn(line, name)
            else:
                return
        except Invalid as exc:
            raise err(line, name, str(exc)) from None
        except Unsupported as exc:
            self.warn(line, exc.name)
            return
        scope.lines[name] = line
        if name in PRIVATE_FILES and args and not inline and args[0] != "stdin":
            if (w := key_mode_warning(self.base_dir, args[0], line, name)) is not None:
                scope.warn(line, w)

    def warn(self, line: int, name: str) -> None:
        self.scope.warn(line, f"option '{name}' (line {line}) is not supported and was ignored")

    def profile(self, source: str | None) -> Profile:
        """The result: the first complete profile, with the others as alternatives."""
        top = self.top
        if not self.blocks:
            result = _finish(top)
            result.warnings = [text for _, text in top.warnings]
        else:
            first = self.blocks[0]
            result = _finish(top.overlay(first))
            merged = heapq.merge(top.warnings, first.warnings, key=lambda w: w[0])
            result.warnings = [text for _, text in merged] + [
                f"option 'remote' (line {r.line}) is ignored because <connection> blocks are present"
                for r in top.extra.raw_remotes
            ]
            for block in self.blocks[1:]:
                alt = _finish(top.overlay(block))
                alt.connections = self.raw_blocks
                alt.source = source
                result.alternatives.append(alt)
        result.connections = self.raw_blocks
        result.source = source
        return result


# ---- final checks: one complete profile -------------------------------------------------


def _finish(s: Scope) -> Profile:
    """Check the option combinations of one complete scope and fill in the derived fields."""
    p, x, lines = s.profile, s.extra, s.lines
    dev_line = max(lines.get("dev", 0), lines.get("dev-type", 0))
    if x.dev is None:
        raise ConfigError("missing 'dev tun': the profile must name a tun device")
    kind = x.dev_kind
    if kind is None:
        if x.dev.startswith("tun"):
            kind = "tun"
        elif x.dev.startswith("tap"):
            kind = "tap"
        else:
            raise err(dev_line, "dev", f"cannot tell the type of {x.dev!r}; add 'dev-type tun'")
    if kind == "tap":
        raise err(dev_line, "dev", "tap (layer 2) devices are not supported, only tun")
    p.dev_type, p.dev_name = kind, x.dev

    if not p.tls_client:
        # 'pull' alone, or neither: trivpn is always the TLS client ('tls-client' without
        # 'pull' is point-to-point TLS mode: addresses from 'ifconfig', cipher by P2P NCP)
        raise ConfigError("not a client profile: add 'client' (or 'tls-client', with 'pull' for a server)")
    if p.ca is None and not p.peer_fingerprints:
        raise ConfigError("missing 'ca': the server's CA certificate (or 'peer-fingerprint') is required")
    if (p.cert is None) != (p.key is None):
        missing = "key" if p.key is None else "cert"
        raise ConfigError(f"missing '{missing}': 'cert' and 'key' must be given together")
    wraps = [p.tls_auth is not None, p.tls_crypt is not None, p.tls_crypt_v2 is not None]
    if sum(wraps) > 1 and p.tls_crypt_v2 is not None:
        raise ConfigError("only one of 'tls-auth', 'tls-crypt' and 'tls-crypt-v2' may be used")
    if p.tls_auth is not None and p.tls_crypt is not None:
        auth_line, crypt_line = lines.get("tls-auth", 0), lines.get("tls-crypt", 0)
        raise err(
            max(auth_line, crypt_line),
            "tls-crypt" if crypt_line > auth_line else "tls-auth",
            "'tls-auth' and 'tls-crypt' cannot be used together",
        )

    if not x.raw_remotes:
        raise ConfigError("missing 'remote': the profile must name a server")
    _finish_proxy(s)
    p.remotes = [
        Remote(r.host, r.port or x.port or OPENVPN_PORT, r.proto or x.proto or DEFAULT_PROTO)
        for r in x.raw_remotes
    ]
    # lists of its own: a scope copy shares them with the global scope and other blocks
    p.data_ciphers = list(p.data_ciphers)
    p.alternatives = []
    p.warnings = []
    return p


def _finish_proxy(s: Scope) -> None:
    """Proxies carry TCP only, one kind at a time (OpenVPN refuses the same)."""
    p, x, lines = s.profile, s.extra, s.lines
    if len(x.http_headers) > MAX_CUSTOM_HTTP_HEADERS:  # global and block headers together
        line = x.http_headers[MAX_CUSTOM_HTTP_HEADERS][0]
        raise err(line, "http-proxy-option", f"at most {MAX_CUSTOM_HTTP_HEADERS} custom headers")
    default = HTTPProxyOptions()
    p.http_proxy_options = HTTPProxyOptions(
        x.http_version or default.version,
        x.http_agent,
        tuple(header for _, header in x.http_headers),
    )
    if "http-proxy-option" in lines and p.http_proxy is None:
        raise err(
            lines["http-proxy-option"], "http-proxy-option", "is given but there is no 'http-proxy'"
        )
    if p.http_proxy is not None and x.http_proxy_user_pass is not None:
        spec = p.http_proxy
        if spec.credentials is None:
            auth = "basic" if spec.auth == "none" else spec.auth
            p.http_proxy = ProxySpec(spec.host, spec.port, auth, x.http_proxy_user_pass)
    if p.http_proxy is None and p.socks_proxy is None:
        return
    http_line, socks_line = lines.get("http-proxy", 0), lines.get("socks-proxy", 0)
    if p.http_proxy is not None and p.socks_proxy is not None:
        raise err(
            max(http_line, socks_line),
            "socks-proxy" if socks_line > http_line else "http-proxy",
            "'http-proxy' and 'socks-proxy' cannot be used together",
        )
    name = "http-proxy" if p.http_proxy is not None else "socks-proxy"
    line = http_line or socks_line
    for r in x.raw_remotes:
        proto = r.proto or x.proto or DEFAULT_PROTO
        if not proto.startswith("tcp"):
            raise err(
                line,
                name,
                f"a proxy carries TCP only, but 'remote {r.host}' (line {r.line}) uses "
                f"{proto}: add 'proto tcp'",
            )

