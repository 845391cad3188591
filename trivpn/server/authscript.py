"""`auth-user-pass-verify SCRIPT via-file|via-env`: run the script for one client's password.

The key schedule holds the client's first key (AuthRequest); this runs the script without
blocking the event loop and says yes (exit status 0) or no (anything else, a script that
cannot start, or one still running after `seconds`, which is then killed with its process
group). The command is split like a shell word list (quotes, backslashes), as OpenVPN does.
via-file: a 0600 temp file with two lines (username, password), its path the last
argument, removed afterwards. via-env: the password is in the environment as `password`.
The password is never logged; the username is made printable first (OpenVPN replaces
other characters too), since it reaches the environment and the logs.
"""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
from collections.abc import Mapping

from trivpn.server.config_model import AuthScript
from trivpn.server.scripts import run_script
from trivpn.server.sessionparts import common_name_of

__all__ = ["printable_username", "script_env", "verify_password"]

log = logging.getLogger("trivpn.server")

#: The longest username/password handed to a script (OpenVPN's USER_PASS_LEN is 128).
MAX_CREDENTIAL = 4096


def printable_username(name: str) -> str:
    """Characters outside printable ASCII become '_' (env values and log lines stay sane)."""
    return "".join(c if " " <= c <= "~" else "_" for c in name[:MAX_CREDENTIAL])


def script_env(
    username: str, subject: str, addr: tuple[str, int], password: str | None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables of a user-pass-verify script: `base` (the daemon's and the client's,
    see scripts.py), then the ones this call adds. Nothing of our own environment."""
    env = dict(base or {})
    env.update(
        script_type="user-pass-verify",
        username=printable_username(username),
        untrusted_ip=addr[0],
        untrusted_port=str(addr[1]),
    )
    if subject:  # no certificate, no common name yet (as OpenVPN)
        env["common_name"] = common_name_of(subject)
    if "tls_id_0" not in env and subject:
        env["tls_id_0"] = subject
        for rdn in subject.split(", "):
            for part in rdn.split(" + "):
                key, sep, value = part.partition("=")
                if sep and key.isalnum():
                    env[f"X509_0_{key}"] = value
    if password is not None:
        env["password"] = password
    return env


async def verify_password(
    script: AuthScript, username: str, password: str, subject: str, addr: tuple[str, int],
    seconds: float, base: Mapping[str, str] | None = None, *, tmp_dir: str | None = None,
) -> str | None:
    """None when the script accepts the client, else why not (one line, no password)."""
    if "\0" in password or len(password) > MAX_CREDENTIAL:
        return "malformed password"
    try:
        shlex.split(script.command)
    except ValueError as exc:
        return f"cannot split the auth-user-pass-verify command: {exc}"
    env = script_env(username, subject, addr, password if script.method == "via-env" else None, base)
    path = None
    args: list[str] = []
    try:
        if script.method == "via-file":
            fd, path = tempfile.mkstemp(prefix="trivpn-up-", dir=tmp_dir)  # mode 0600
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
                f.write(f"{printable_username(username)}\n{password}\n")
            args.append(path)
        status = await run_script(script.command, args, env, seconds)
    except OSError as exc:
        return f"the auth-user-pass-verify script could not run: {exc.strerror or exc}"
    finally:
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass
    if status is None:
        return f"the auth-user-pass-verify script did not run or did not answer within {seconds:g} s"
    if status != 0:
        return f"the auth-user-pass-verify script said no (exit status {status})"
    return None
