"""Server configuration parser: an OpenVPN 2.6 server config, unchanged, into a :class:`ServerConfig`.

The syntax is OpenVPN's (the client profile's tokenizer and inline blocks are reused:
:mod:`trivpn.profile.options`); how each option is treated is told in
:mod:`trivpn.server.config_options`.  After one walk over the lines, the combination
checks run and OpenVPN's ``server``/``server-ipv6`` helpers are expanded into typed
fields (the server's tun addresses, the pools, the pushes they add) so that the pool,
the routing table and PUSH_REPLY never re-derive them.

Several listeners (a trivpn extension; OpenVPN 2.6 serves one socket)
--------------------------------------------------------------------
Without ``<listen>`` blocks the server listens on one socket made of the top-level
``proto``/``port``/``local`` (defaults ``udp``, ``1194``, the wildcard address).  Each
``<listen>`` block describes one socket instead; it may hold only ``proto``, ``port``
(or ``lport``) and ``local``, and whatever it leaves out comes from the top-level
options, wherever they appear in the file::

    port 1194
    <listen>
    proto udp
    </listen>
    <listen>
    proto tcp-server
    port 443
    local 192.0.2.1
    </listen>

``proto udp``/``tcp`` with no ``local``, or with a name, means both address families
(``family None``: the service binds every address the resolver returns);
``udp4``/``udp6``/``tcp4``/``tcp6`` pin one.  All listeners share one address pool.

The ``server`` helper (as OpenVPN 2.6's, reference openvpn-server.md 1.5)
-------------------------------------------------------------------------
The pools are :mod:`trivpn.server.pool_types` values, ready for
:class:`~trivpn.server.pool.AddressPool`.  ``server N M`` with topology subnet: the
server is N+1/M, the pool N+2 .. broadcast-1, and ``route-gateway N+1`` and ``topology
subnet`` are pushed.  With net30 (2.6's default): the server is N+1 with peer N+2, the
pool is the /30 blocks from N+4 up to broadcast-4 (to the broadcast for a /29),
``route N+1`` (``route N M`` with client-to-client) and ``topology net30`` are pushed,
and the server routes N/M into the tun.  topology p2p is refused (the pool has no p2p
layout).  ``server-ipv6 P/n``: the server is P+1/n, the IPv6 pool starts at P+0x1000
(P+2 from /112 on) and ``tun-ipv6`` is pushed.  ``keepalive A B`` pushes ``ping A``
and ``ping-restart B`` and the server itself uses ``ping A``, ``ping-restart 2B``.

Relative file names (keys, ``ifconfig-pool-persist``, ``status``, ``client-config-dir``)
are anchored at the config file's directory - where systemd's ``openvpn-server@`` unit
runs OpenVPN - or, after a ``cd DIR`` line, at DIR, as OpenVPN changes directory while
parsing.  Errors are one-line :class:`ConfigError`; a line-level one starts ``line N:``.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network, IPv6Interface
from pathlib import Path

from trivpn.datachannel.crypto import SUPPORTED_DATA_CIPHERS, normalize_data_cipher
from trivpn.errors import ConfigError
from trivpn.profile.checks import (
    MAX_REFERENCED_FILE_SIZE,
    Invalid,
    Unsupported,
    err,
    read_limited,
)
from trivpn.profile.model import DEFAULT_DATA_CIPHERS, DEFAULT_VERB, OPENVPN_PORT
from trivpn.profile.options import is_inline, iter_options
from trivpn.server.config_draft import Draft, RawListener
from trivpn.server.config_model import (
    DEFAULT_CONNECT_FREQ_INITIAL,
    DEFAULT_HAND_WINDOW,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_RENEG_SEC,
    AuthGenToken,
    AuthScript,
    Listener,
    Management,
    PoolPersist,
    ServerConfig,
    StatusFile,
)
from trivpn.server.config_options import SERVER, SHARED, SILENT, UNSAFE
from trivpn.server.pool_types import POOL_MAX, IPv4Pool, IPv6Pool, PoolType
from trivpn.server.routing import MAX_ROUTES_PER_CLIENT

__all__ = ["LISTEN_OPTIONS", "ServerConfig", "load_server_config", "parse_server_config"]

#: Options a ``<listen>`` block may hold.
LISTEN_OPTIONS = frozenset({"proto", "port", "lport", "local"})
#: IPv6 pool offset from the network: 0x1000, or 2 for /112 and longer prefixes.
_IPV6_POOL_OFFSET = 0x1000
_IPV6_SMALL_PREFIX = 112
_SCRIPT_OPTIONS = ("auth-user-pass-verify", "client-connect", "client-disconnect", "learn-address")


def load_server_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Read and parse the server config at ``path``; its directory anchors relative files."""
    p = Path(path)
    try:
        data = read_limited(p)
    except OSError as exc:
        raise ConfigError(f"cannot read config '{p}': {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"invalid config file name {str(p)[:80]!r}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config '{p}' is not valid UTF-8 text") from None
    return parse_server_config(text, base_dir=p.parent, source=str(p))


def parse_server_config(
    text: str, *, base_dir: Path | None = None, source: str | None = None
) -> ServerConfig:
    """Parse server config ``text``; raises :class:`ConfigError` with a one-line message."""
    try:
        if len(text) > MAX_REFERENCED_FILE_SIZE:
            raise ConfigError(f"larger than {MAX_REFERENCED_FILE_SIZE} characters")
        draft = Draft(base_dir)
        for line, tokens in iter_options(text):
            if tokens[0] == "<listen>":
                _listen_block(draft, line, tokens[1])
            else:
                _apply(draft, line, tokens)
        return _finish(draft, source)
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from None
        raise


def _apply(d: Draft, line: int, tokens: list[str]) -> None:
    """Treat one option line (see config_options for the order of treatments)."""
    inline = is_inline(tokens)
    name = tokens[0][1:-1] if inline else tokens[0]
    args = tokens[1:]
    try:
        if (row := SHARED.get(name)) is not None:
            for attr, value in row.assignments(args, inline, d.base_dir):
                setattr(d, attr, value)
        elif (handler := SERVER.get(name)) is not None:
            handler(d, line, args, inline)
        elif name in UNSAFE:
            raise Invalid(f"is not supported: {UNSAFE[name]}")
        elif name not in SILENT:
            _warn(d, line, name)
            return
        else:
            return
    except Invalid as exc:
        raise err(line, name, str(exc)) from None
    except Unsupported as exc:
        _warn(d, line, exc.name)
        return
    d.lines[name] = line


def _warn(d: Draft, line: int, name: str) -> None:
    d.warnings.append((line, f"option '{name}' (line {line}) is not supported and was ignored"))


def _listen_block(d: Draft, line: int, body: str) -> None:
    """One ``<listen>`` block: a listener of its own (see the module docstring)."""
    sub = Draft(d.base_dir)
    for sub_line, tokens in iter_options(body, line + 1):
        name = tokens[0][1:-1] if is_inline(tokens) else tokens[0]
        if name not in LISTEN_OPTIONS:
            raise err(sub_line, name, "is not allowed inside a <listen> block (proto, port, local)")
        _apply(sub, sub_line, tokens)
    d.listen_blocks.append(RawListener(line, sub.proto, sub.port, sub.local))


# ---- final checks ------------------------------------------------------------------------


def _line_err(d: Draft, name: str, msg: str) -> ConfigError:
    """An error about option ``name`` as a whole: with its line when it was given."""
    line = d.lines.get(name)
    return err(line, name, msg) if line is not None else ConfigError(f"option '{name}': {msg}")


def _finish(d: Draft, source: str | None) -> ServerConfig:
    helper = d.server is not None or d.server_ipv6 is not None
    if not (helper or d.mode_server):
        raise ConfigError(
            "not a server configuration: add 'server NETWORK NETMASK' "
            "(or 'mode server' with 'tls-server')"
        )
    if d.mode_server and not helper and not d.tls_server:
        raise _line_err(d, "mode", "'mode server' requires 'tls-server'")
    _check_dev(d)
    for name in ("ca", "cert", "key"):
        if getattr(d, name) is None:
            raise ConfigError(f"missing '{name}': a TLS server needs 'ca', 'cert' and 'key'")
    wraps = [n for n in ("tls-auth", "tls-crypt", "tls-crypt-v2") if n in d.lines]
    if len(wraps) > 1:
        last = max(wraps, key=lambda n: d.lines[n])
        raise _line_err(d, last, f"'{wraps[0]}' and '{wraps[1]}' cannot be used together")
    _check_auth(d)
    data_ciphers = _data_ciphers(d)
    if d.hand_window is not None and d.hand_window < 1:
        raise _line_err(d, "hand-window", "must be at least 1 second on a server")
    ping, ping_restart, helper_push = _keepalive(d)
    topology = d.topology or "net30"
    v4 = _expand_ipv4(d, topology)
    v6 = _expand_ipv6(d)
    push = [*d.push, *v6.push, *v4.push, *helper_push]
    routes = [*d.routes, *v4.routes]
    management = Management(*d.management) if d.management is not None else None
    listeners = _listeners(d)
    if d.connect_freq is not None and any(x.proto == "tcp" for x in listeners):
        # OpenVPN's words: the limit is on UDP cookie exchanges; TCP has none
        raise _line_err(d, "connect-freq", "only works with --mode server --proto udp.  Try --max-clients instead.")
    return ServerConfig(
        listeners=listeners,
        ca=_str(d.ca),
        cert=_str(d.cert),
        key=_str(d.key),
        dev=_str(d.dev),
        topology=topology,
        ifconfig=v4.ifconfig,
        ifconfig_ipv6=v6.ifconfig,
        pool=v4.pool,
        pool_ipv6=v6.pool,
        network=d.server[0] if d.server is not None else None,
        network_ipv6=d.server_ipv6,
        push=tuple(push),
        routes=tuple(routes),
        routes_ipv6=tuple(d.routes_ipv6),
        dh=d.dh,
        tls_auth=d.tls_auth,
        key_direction=d.key_direction,
        tls_crypt=d.tls_crypt,
        tls_crypt_v2=d.tls_crypt_v2,
        crl_verify=d.crl_verify,
        crl_verify_path=d.crl_verify_path,
        data_ciphers=data_ciphers,
        data_ciphers_fallback=d.data_ciphers_fallback,
        auth=d.auth,
        tls_version_min=d.tls_version_min,
        keepalive=d.keepalive,
        ping=ping,
        ping_restart=ping_restart,
        client_to_client=d.client_to_client,
        duplicate_cn=d.duplicate_cn,
        max_clients=d.max_clients or DEFAULT_MAX_CLIENTS,
        max_routes_per_client=d.max_routes_per_client or MAX_ROUTES_PER_CLIENT,
        pool_persist=PoolPersist(*d.pool_persist) if d.pool_persist else None,
        client_config_dir=d.client_config_dir,
        ccd_exclusive=d.ccd_exclusive,
        verify_client_cert=d.verify_client_cert or "require",
        remote_cert_tls=d.remote_cert_tls,
        auth_user_pass_verify=AuthScript(*d.auth_user_pass_verify)
        if d.auth_user_pass_verify
        else None,
        script_security=d.script_security if d.script_security is not None else 1,
        username_as_common_name=d.username_as_common_name,
        management_client_auth=d.management_client_auth,
        client_connect=d.client_connect,
        client_disconnect=d.client_disconnect,
        learn_address=d.learn_address,
        explicit_exit_notify=d.explicit_exit_notify,
        reneg_sec=d.reneg_sec if d.reneg_sec is not None else DEFAULT_RENEG_SEC,
        hand_window=d.hand_window if d.hand_window is not None else DEFAULT_HAND_WINDOW,
        status=StatusFile(*d.status, d.status_version or 1) if d.status else None,
        user=d.user,
        group=d.group,
        management=management,
        verb=d.verb if d.verb is not None else DEFAULT_VERB,
        persist_key=d.persist_key,
        persist_tun=d.persist_tun,
        connect_freq=d.connect_freq,
        connect_freq_initial=d.connect_freq_initial or DEFAULT_CONNECT_FREQ_INITIAL,
        tun_mtu=d.tun_mtu,
        compression=d.compression,
        setenv=tuple(d.setenv),
        auth_gen_token=_auth_gen_token(d),
        tmp_dir=d.tmp_dir,
        warnings=tuple(text for _, text in sorted(d.warnings, key=lambda w: w[0])),
        source=source,
    )


def _auth_gen_token(d: Draft) -> AuthGenToken | None:
    if d.auth_gen_token is None:
        if d.auth_gen_token_secret is not None:
            line = d.lines["auth-gen-token-secret"]
            d.warnings.append((line, f"option 'auth-gen-token-secret' (line {line}) has no effect without 'auth-gen-token'"))
        return None
    if d.auth_user_pass_verify is None:
        line = d.lines["auth-gen-token"]
        d.warnings.append((line, f"option 'auth-gen-token' (line {line}) has no effect without 'auth-user-pass-verify'"))
        return None
    lifetime, renewal, external = d.auth_gen_token
    reneg = d.reneg_sec if d.reneg_sec is not None else DEFAULT_RENEG_SEC
    return AuthGenToken(lifetime, renewal or reneg or DEFAULT_RENEG_SEC, external, d.auth_gen_token_secret)


def _str(value: str | None) -> str:
    assert value is not None  # checked by _finish before
    return value


def _check_dev(d: Draft) -> None:
    if d.dev is None:
        raise ConfigError("missing 'dev tun': the server needs a tun device")
    kind = d.dev_kind or ("tun" if d.dev.startswith("tun") else None)
    if kind is None:
        if d.dev.startswith("tap"):
            kind = "tap"
        else:
            raise _line_err(d, "dev", f"cannot tell the type of {d.dev!r}; add 'dev-type tun'")
    if kind != "tun":
        name = "dev-type" if d.dev_kind else "dev"
        raise _line_err(d, name, "tap (layer 2) devices are not supported, only tun")


def _check_auth(d: Draft) -> None:
    """Refuse combinations that would accept clients nobody checks, or scripts that cannot run."""
    if d.verify_client_cert in ("none", "optional") and d.auth_user_pass_verify is None:
        raise _line_err(
            d,
            "verify-client-cert",
            f"'{d.verify_client_cert}' needs an 'auth-user-pass-verify' script "
            "(clients would be accepted unchecked)",
        )
    if d.ccd_exclusive and d.client_config_dir is None:
        raise _line_err(d, "ccd-exclusive", "needs 'client-config-dir'")
    level = d.script_security if d.script_security is not None else 1
    for name in _SCRIPT_OPTIONS:
        if name in d.lines and level < 2:
            raise _line_err(
                d, name, f"runs a script, which needs 'script-security 2' or higher (is {level})"
            )
    if d.auth_user_pass_verify is not None and d.auth_user_pass_verify[1] == "via-env":
        if level < 3:
            raise _line_err(
                d,
                "auth-user-pass-verify",
                "via-env passes the password in the environment, which needs 'script-security 3'",
            )
    if d.username_as_common_name and d.auth_user_pass_verify is None and not d.management_client_auth:
        line = d.lines["username-as-common-name"]
        d.warnings.append(
            (
                line,
                f"option 'username-as-common-name' (line {line}) has no effect without "
                "'auth-user-pass-verify'",
            )
        )


def _supported(cipher: str) -> bool:
    try:
        normalize_data_cipher(cipher)
    except ConfigError:
        return False
    return True


def _data_ciphers(d: Draft) -> tuple[str, ...]:
    """The data-ciphers trivpn speaks. None of them would give every client AUTH_FAILED (no
    shared cipher): an error; the others are dropped with a warning. An unusable fallback
    only concerns clients without cipher negotiation: a warning."""
    fallback = d.data_ciphers_fallback
    if fallback is not None and not _supported(fallback):
        line = d.lines["data-ciphers-fallback"]
        d.warnings.append((line, f"option 'data-ciphers-fallback' (line {line}): {fallback} is not supported; "
                                 "clients that cannot negotiate a cipher will be refused"))
    if not d.data_ciphers:
        return DEFAULT_DATA_CIPHERS
    name = max(("data-ciphers", "ncp-ciphers"), key=lambda n: d.lines.get(n, -1))
    known = [c for c in d.data_ciphers if _supported(c)]
    unknown = [c for c in d.data_ciphers if not _supported(c)]
    if not known:
        choices = ", ".join(SUPPORTED_DATA_CIPHERS)
        raise _line_err(d, name, f"no cipher trivpn supports in {', '.join(unknown)} (use one of {choices})")
    if unknown:
        line = d.lines[name]
        d.warnings.append((line, f"option '{name}' (line {line}): {', '.join(unknown)} not supported, ignored"))
    return tuple(known)


def _keepalive(d: Draft) -> tuple[int | None, int | None, list[str]]:
    """(server ping, server ping-restart, pushes) from keepalive/ping/ping-restart."""
    if d.keepalive is None:
        return d.ping, d.ping_restart, []
    for name in ("ping", "ping-restart"):
        if name in d.lines:
            raise _line_err(d, name, "cannot be used together with 'keepalive'")
    interval, timeout = d.keepalive
    if not interval and not timeout:
        return None, None, []
    if interval and timeout and timeout < 2 * interval:
        raise _line_err(d, "keepalive", "the timeout must be at least twice the ping interval")
    push = [f"ping {interval}", f"ping-restart {timeout}"]
    return interval or None, 2 * timeout or None, push


class _V4:
    """What the IPv4 part of the helper (or the manual options) yields."""

    def __init__(self) -> None:
        self.ifconfig: tuple[IPv4Address, IPv4Address] | None = None
        self.pool: IPv4Pool | None = None
        self.push: list[str] = []
        self.routes: list[IPv4Network] = []


def _expand_ipv4(d: Draft, topology: str) -> _V4:
    out = _V4()
    if d.server is None:
        out.ifconfig = d.ifconfig
        out.pool = _manual_pool(d, topology, d.ifconfig, None)
        return out
    net, nopool = d.server
    if d.ifconfig is not None:
        raise _line_err(d, "ifconfig", "cannot be used with 'server' (it sets the address)")
    if d.ifconfig_pool is not None and not nopool:
        raise _line_err(d, "ifconfig-pool", "'server' already defines the pool (or add 'nopool')")
    if net.prefixlen < 16:
        raise _line_err(d, "server", "the network is too large (255.255.0.0 (/16) or smaller)")
    if net.prefixlen > 29:
        raise _line_err(d, "server", "the network must be 255.255.255.248 (/29) or larger")
    base, bcast, mask = int(net.network_address), int(net.broadcast_address), net.netmask
    server = IPv4Address(base + 1)
    if topology == "subnet":
        out.ifconfig = (server, mask)
        out.pool = IPv4Pool(
            PoolType.INDIV, IPv4Address(base + 2), IPv4Address(bcast - 1), mask, net, server
        )
        out.push = [f"route-gateway {server}", "topology subnet"]
    else:
        out.ifconfig = (server, IPv4Address(base + 2))
        reserve = 0 if net.prefixlen == 29 else 4
        out.pool = IPv4Pool(
            PoolType.NET30, IPv4Address(base + 4), IPv4Address(bcast - reserve), None, net, server
        )
        route = f"route {net.network_address} {mask}" if d.client_to_client else f"route {server}"
        out.push = [route, "topology net30"]
        out.routes = [net]
    if nopool:
        out.pool = _manual_pool(d, topology, out.ifconfig, net)
    return out


def _manual_pool(
    d: Draft,
    topology: str,
    ifconfig: tuple[IPv4Address, IPv4Address] | None,
    network: IPv4Network | None,
) -> IPv4Pool | None:
    """The pool from ``ifconfig-pool START END [MASK]`` (no helper, or ``nopool``);
    ``ifconfig`` is the server's own tun address (with its netmask, or its peer)."""
    if d.ifconfig_pool is None:
        return None
    start, end, mask = d.ifconfig_pool
    server = ifconfig[0] if ifconfig is not None else None
    if topology == "subnet":
        if mask is None and ifconfig is not None:
            mask = ifconfig[1]
        if mask is None:
            raise _line_err(d, "ifconfig-pool", "topology subnet needs a netmask (or 'ifconfig')")
        if int(end) - int(start) + 1 > POOL_MAX:
            raise _line_err(d, "ifconfig-pool", f"more than {POOL_MAX} addresses")
        if network is None and server is not None:
            try:
                network = IPv4Network(f"{server}/{mask}", strict=False)
            except ValueError:  # 'ifconfig A B' with a peer address B, not a netmask
                raise _line_err(d, "ifconfig", f"topology subnet needs a netmask, not {mask}") from None
        return IPv4Pool(PoolType.INDIV, start, end, mask, network, server)
    first, last = int(start) & ~3, int(end) | 3
    if (last + 1 - first) // 4 > POOL_MAX:
        raise _line_err(d, "ifconfig-pool", f"more than {POOL_MAX} /30 blocks")
    return IPv4Pool(PoolType.NET30, start, end, None, network, server)


class _V6:
    def __init__(self) -> None:
        self.ifconfig: IPv6Interface | None = None
        self.pool: IPv6Pool | None = None
        self.push: list[str] = []


def _expand_ipv6(d: Draft) -> _V6:
    out = _V6()
    net = d.server_ipv6
    if net is None:
        out.ifconfig = d.ifconfig_ipv6
        if d.ifconfig_ipv6_pool is not None:
            pool = d.ifconfig_ipv6_pool
            if not 64 <= pool.network.prefixlen <= 124:
                raise _line_err(d, "ifconfig-ipv6-pool", "the prefix must be between /64 and /124")
            server = d.ifconfig_ipv6.ip if d.ifconfig_ipv6 is not None else None
            out.pool = IPv6Pool(pool.ip, pool.network.prefixlen, server)
        return out
    if d.server is not None and d.server[1]:
        raise _line_err(d, "server-ipv6", "cannot be used with 'server ... nopool'")
    for name in ("ifconfig-ipv6", "ifconfig-ipv6-pool"):
        if name in d.lines:
            raise _line_err(d, name, "cannot be used with 'server-ipv6' (it sets the address)")
    base = net.network_address
    out.ifconfig = IPv6Interface(f"{base + 1}/{net.prefixlen}")
    offset = 2 if net.prefixlen >= _IPV6_SMALL_PREFIX else _IPV6_POOL_OFFSET
    out.pool = IPv6Pool(base + offset, net.prefixlen, base + 1)
    out.push = ["tun-ipv6"]
    return out


def _listeners(d: Draft) -> tuple[Listener, ...]:
    raws = d.listen_blocks or [RawListener(d.lines.get("proto", 0))]
    seen: dict[tuple[str, int, str | None, int | None], int] = {}
    out: list[Listener] = []
    for raw in raws:
        proto, family = raw.proto or d.proto or ("udp", None)
        port = raw.port or d.port or OPENVPN_PORT
        local = raw.local if raw.local is not None else d.local
        key = (proto, port, local, family)
        if key in seen:
            raise err(
                raw.line, "listen", f"the same socket as the <listen> block at line {seen[key]}"
            )
        seen[key] = raw.line
        out.append(Listener(proto, port, local, family, raw.line))
    return tuple(out)
