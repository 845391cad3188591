"""Admitting one client: its password or auth-token, then client-connect's dynamic config.

The key schedule holds a client's first key (AuthRequest) whenever a script or
auth-gen-token is configured; the client's `Admission` (clientadmit.py) then runs, in
OpenVPN's order: the password check (`check_credentials`: a valid auth-token skips the
verify script unless `external-auth`), the address and ccd choice, `client-connect` (whose
temporary file may hold ccd-style options: `dynamic_entry` reads it, `merge_entries` lays
it over the ccd entry), the routes with their `learn-address add` calls, and only then the
AuthVerdict that releases the PUSH_REPLY. `ServerScripts` holds what every client shares:
the daemon's variables (known once the TUN is open) and the auth-token key.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import replace

from trivpn.messages import AuthRequest
from trivpn.profile.checks import MAX_REFERENCED_FILE_SIZE
from trivpn.records import dataclass
from trivpn.server.authscript import MAX_CREDENTIAL, printable_username, run_verify
from trivpn.server.authtoken import (
    AuthTokenKey,
    check_token,
    is_auth_token,
    make_token,
    session_state,
)
from trivpn.server.ccd import CcdEntry, parse_ccd
from trivpn.server.config_model import ServerConfig
from trivpn.server.scripts import DaemonInfo, daemon_env

__all__ = ["Credentials", "ServerScripts", "check_credentials", "connect_file", "dynamic_entry", "merge_entries"]

log = logging.getLogger("trivpn.server")


class ServerScripts:
    """What every client's scripts and tokens share (one per server)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.daemon: dict[str, str] = {}
        token = config.auth_gen_token
        self.token_key: AuthTokenKey | None = None
        if token is not None:
            self.token_key = AuthTokenKey.from_pem(token.secret) if token.secret else AuthTokenKey.generate()

    def opened(self, dev: str) -> None:
        """The TUN is up: the daemon's variables are complete."""
        self.daemon = daemon_env(self.config, DaemonInfo(dev, os.getpid(), int(time.time())))

    @property
    def hold(self) -> bool:
        """Whether clients wait for the session's answer before keys and PUSH_REPLY."""
        c = self.config
        return any(x is not None for x in (
            c.auth_user_pass_verify, c.client_connect, c.client_disconnect, c.learn_address, c.auth_gen_token,
        ))


@dataclass(frozen=True, slots=True)
class Credentials:
    """The verdict on a client's password: `why` None means accepted; `token` is the
    auth-token to push (kept out of repr)."""

    why: str | None
    token: str | None = None
    reason: str = ""  # what AUTH_FAILED tells the client

    def __repr__(self) -> str:
        return f"Credentials(why={self.why!r}, token={'set' if self.token else None})"


async def check_credentials(
    scripts: ServerScripts, ev: AuthRequest, addr: tuple[str, int], base: dict[str, str], seconds: float,
) -> Credentials:
    """The password check (see the module docstring); never logs the password or token."""
    cfg = scripts.config
    script, token_cfg, key = cfg.auth_user_pass_verify, cfg.auth_gen_token, scripts.token_key
    if script is None:
        return Credentials(None)
    if len(ev.username) > MAX_CREDENTIAL:
        return Credentials("malformed username")
    user = printable_username(ev.username)
    now = int(time.time())
    check = None
    if token_cfg is not None and key is not None and is_auth_token(ev.password):
        check = check_token(key, ev.password, ev.username, now, renewal=token_cfg.renewal,
                            lifetime=token_cfg.lifetime)
        if not token_cfg.external_auth:
            if check.ok:
                log.info("user %r authenticated by its auth-token", user)
                return Credentials(None, make_token(key, ev.username, now, renew=ev.password))
            if check.hmac_ok and check.expired:
                return Credentials("the auth-token expired", reason="SESSION: token expired")
            return Credentials("the auth-token is not valid")
    env = dict(base)
    token = None
    if token_cfg is not None and key is not None:
        keep = check is not None and check.hmac_ok and not check.expired
        token = make_token(key, ev.username, now, renew=ev.password if keep else None)
        env["session_state"] = session_state(ev.password, check)
        env["session_id"] = token[len("SESS_ID_AT_") : len("SESS_ID_AT_") + 16]
    verdict = await run_verify(script, ev.username, ev.password, ev.peer_subject, addr, seconds, env,
                               tmp_dir=cfg.tmp_dir, common_name=ev.common_name)
    why = verdict.why
    if why is not None:
        reason = "SESSION: token expired" if check is not None and check.expired else verdict.reason
        return Credentials(why, reason=reason)
    return Credentials(None, token)


def dynamic_entry(path: str) -> CcdEntry | None:
    """What a client-connect script wrote into its file (None when nothing; ConfigError
    when it does not parse, which refuses the client as a bad ccd file does)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(MAX_REFERENCED_FILE_SIZE + 1)
    except OSError:
        return None
    if not text.strip():
        return None
    return parse_ccd(text, source="client-connect file")


def merge_entries(ccd: CcdEntry | None, dyn: CcdEntry | None) -> CcdEntry | None:
    """The script's options applied after the ccd file's, as OpenVPN applies them in turn:
    its `push-reset` also drops the ccd's pushes, its `push-remove` the matching ones, its
    addresses replace the ccd's, iroutes add up, `disable` from either refuses."""
    if dyn is None or ccd is None:
        return dyn if ccd is None else ccd
    kept = () if dyn.push_reset else tuple(p for p in ccd.push if not p.startswith(dyn.push_remove))
    return replace(
        ccd,
        ifconfig_push=dyn.ifconfig_push or ccd.ifconfig_push,
        ifconfig_ipv6_push=dyn.ifconfig_ipv6_push or ccd.ifconfig_ipv6_push,
        iroutes=tuple(dict.fromkeys((*ccd.iroutes, *dyn.iroutes))),
        iroutes_ipv6=tuple(dict.fromkeys((*ccd.iroutes_ipv6, *dyn.iroutes_ipv6))),
        push=(*kept, *dyn.push),
        push_reset=ccd.push_reset or dyn.push_reset,
        push_remove=(*ccd.push_remove, *dyn.push_remove),
        disable=ccd.disable or dyn.disable,
        warnings=(*ccd.warnings, *dyn.warnings),
    )


def connect_file(directory: str | None = None) -> str:
    """A fresh empty 0600 file for the client-connect script to write into (`tmp-dir`)."""
    fd, path = tempfile.mkstemp(prefix="trivpn_cc_", suffix=".tmp", dir=directory)
    os.close(fd)
    return path

