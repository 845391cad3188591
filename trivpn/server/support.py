"""Which parsed server options this first `trivpn serve` honours, and what happens to the rest.

The parser accepts every option of issue 12's list; the service does not implement all of
them yet. Ignoring some would let clients in that the configuration means to keep out
(a client-connect script that can refuse, client certificates made optional), so
those are errors; the others are one-line warnings, like an unknown option.

It also runs the start-up checks a parser cannot (they look at the files and users of this
host), so that a mistake is one line at start instead of a server that says it is up and then
fails every client: the private key must belong to the certificate; with `user`/`group`,
the files read after the drop must be reachable by that user (privdrop.access_problem).
"""

from __future__ import annotations

import os

from trivpn.errors import ConfigError
from trivpn.server.config_model import ServerConfig
from trivpn.server.privdrop import access_problem, dropped_ids

__all__ = ["check_served"]


def check_served(cfg: ServerConfig) -> list[str]:
    """Warnings for ignored options; ConfigError for the first one unsafe to ignore."""
    unsafe = [
        (cfg.compression is not None, "comp-lzo/compress", "the compression framing is not served yet"),
    ]
    if cfg.management_client_auth and cfg.management is None:
        raise ConfigError("option 'management-client-auth' needs 'management' (who else would approve clients?)")
    for bad, name, why in unsafe:
        if bad:
            raise ConfigError(f"option '{name}' is not supported by trivpn serve yet: {why}")
    _check_identity(cfg)
    _check_addresses(cfg)
    _check_after_drop(cfg)
    ignored = [
        (cfg.connect_freq is not None, "connect-freq"),
    ]
    return [f"option '{name}' is not supported by trivpn serve yet and was ignored" for bad, name in ignored if bad]


def _check_identity(cfg: ServerConfig) -> None:
    """The certificate and the key as the TLS context takes them (a key that is not the
    certificate's would fail every handshake, e.g. `key ca.key`)."""
    from OpenSSL import SSL

    from trivpn.tlssession.tlsload import load_identity

    try:
        load_identity(SSL.Context(SSL.TLS_METHOD), cfg.cert, cfg.key)
    except ConfigError as exc:
        raise ConfigError(f"options 'cert'/'key': {exc}") from None


def _check_addresses(cfg: ServerConfig) -> None:
    """Without any pool ('nopool', or 'mode server' without 'ifconfig-pool') a client gets
    an address only from client-config-dir, a client-connect file or management
    client-auth; with none of them every client would be refused."""
    if cfg.pool is not None or cfg.pool_ipv6 is not None:
        return
    if cfg.client_config_dir is None and cfg.client_connect is None and not cfg.management_client_auth:
        raise ConfigError(
            "no address for any client: the server has no dynamic pool ('nopool' or no 'ifconfig-pool') "
            "and nothing gives a fixed one ('ifconfig-push' in a 'client-config-dir' file)"
        )


def _check_after_drop(cfg: ServerConfig) -> None:
    """With `user`/`group`: refuse files the server reads after the drop but could not then
    (a crl-verify file it cannot re-read would keep letting revoked clients in)."""
    ids = dropped_ids(cfg.user, cfg.group)
    if ids is None:
        return
    uid, gid, name = ids
    needs: list[tuple[str, str | None, int, bool, str, str]] = [
        ("crl-verify", cfg.crl_verify_path, os.R_OK, False, "read", "a revoked client would still be let in"),
    ]
    for option, path, want, directory, verb, why in needs:
        if path is None:
            continue
        if (problem := access_problem(path, uid, gid, want, directory=directory)) is not None:
            raise ConfigError(
                f"option '{option}': user {name} could not {verb} {path} after the privilege drop "
                f"({problem}), so {why}"
            )
