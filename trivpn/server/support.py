"""Which parsed server options this first `trivpn serve` honours, and what happens to the rest.

The parser accepts every option of issue 12's list; the service does not implement all of
them yet. Ignoring some would let clients in that the configuration means to keep out
(a client-connect script that can refuse, client certificates made optional), so
those are errors; the others are one-line warnings, like an unknown option.

It also runs the start-up checks a parser cannot (they look at the files and users of this
host), so that a mistake is one line at start instead of a server that says it is up and
then fails every client: the private key must belong to the certificate; `tmp-dir` and
`client-config-dir` must be directories, the scripts' programs must exist and be
executable, and the status file must be writable (OpenVPN refuses these at start too);
some client must be able to get an address; with `user`/`group`, the files read after the
drop must be reachable by that user (privdrop.access_problem).
"""

from __future__ import annotations

import os
import shlex
import shutil

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
    programs = _check_paths(cfg)
    _check_after_drop(cfg, programs)
    return []


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


def _scripts(cfg: ServerConfig) -> list[tuple[str, str]]:
    auth = cfg.auth_user_pass_verify
    commands = [
        ("auth-user-pass-verify", auth.command if auth is not None else None),
        ("client-connect", cfg.client_connect),
        ("client-disconnect", cfg.client_disconnect),
        ("learn-address", cfg.learn_address),
    ]
    return [(option, command) for option, command in commands if command is not None]


def _directory(option: str, path: str, want: int, verb: str) -> None:
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"option '{option}': {path} {what}")
    if not os.access(path, want):
        raise ConfigError(f"option '{option}': cannot {verb} {path}")


def _program(option: str, command: str) -> str:
    """The file a script command runs (split like a shell word list, as when it runs)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"option '{option}': cannot split the command: {exc}") from None
    if not argv:
        raise ConfigError(f"option '{option}': empty command")
    program = argv[0]
    if "/" not in program:
        found = shutil.which(program)
        if found is None:
            raise ConfigError(f"option '{option}': no program {program!r} in PATH")
        return found
    if not os.path.isfile(program):
        what = "is not a file" if os.path.exists(program) else "does not exist"
        raise ConfigError(f"option '{option}': {program} {what}")
    if not os.access(program, os.X_OK):
        raise ConfigError(f"option '{option}': {program} is not executable")
    return program


def _status_file(path: str) -> None:
    """The status file is first written after 'Initialization Sequence Completed': a path
    that cannot be written would end the server right after it said it was up. Its
    directory must take a new file (the atomic replace, or the open before a drop)."""
    if os.path.isdir(path):
        raise ConfigError(f"option 'status': {path} is a directory")
    _directory("status", os.path.dirname(path) or ".", os.W_OK | os.X_OK, "create files in")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"option 'status': cannot write {path}")


def _check_paths(cfg: ServerConfig) -> list[tuple[str, str]]:
    """tmp-dir, client-config-dir, status and the scripts, as OpenVPN checks them at start (else
    each connecting client would be refused); returns (option, program) of the scripts."""
    if cfg.tmp_dir is not None:
        _directory("tmp-dir", cfg.tmp_dir, os.R_OK | os.W_OK | os.X_OK, "write to")
    if cfg.client_config_dir is not None:
        _directory("client-config-dir", cfg.client_config_dir, os.R_OK | os.X_OK, "read")
    if cfg.status is not None:
        _status_file(cfg.status.path)
    return [(option, _program(option, command)) for option, command in _scripts(cfg)]


def _check_after_drop(cfg: ServerConfig, programs: list[tuple[str, str]]) -> None:
    """With `user`/`group`: refuse files the server reads after the drop but could not then
    (a crl-verify file it cannot re-read would refuse every new client: crlfile.py fails closed)."""
    ids = dropped_ids(cfg.user, cfg.group)
    if ids is None:
        return
    uid, gid, name = ids
    needs: list[tuple[str, str | None, int, bool, str, str]] = [
        ("crl-verify", cfg.crl_verify_path, os.R_OK, False, "read", "every new client would be refused"),
        ("client-config-dir", cfg.client_config_dir, os.R_OK | os.X_OK, True, "read",
         "the clients' files (and their 'disable') would be missed"),
        ("tmp-dir", cfg.tmp_dir, os.W_OK | os.X_OK, True, "write to", "every script call would fail"),
    ]
    needs += [(option, program, os.X_OK, False, "run", "every call would fail") for option, program in programs]
    for option, path, want, directory, verb, why in needs:
        if path is None:
            continue
        if (problem := access_problem(path, uid, gid, want, directory=directory)) is not None:
            raise ConfigError(
                f"option '{option}': user {name} could not {verb} {path} after the privilege drop "
                f"({problem}), so {why}"
            )
