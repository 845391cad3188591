"""`auth-user-pass-verify SCRIPT via-file|via-env`: run the script for one client's password.

The key schedule holds the client's first key (AuthRequest); this runs the script without
blocking the event loop and says yes (exit status 0) or no (anything else, a script that
cannot start, or one still running after `seconds`, which is then killed with its process
group). The command is split like a shell word list (quotes, backslashes), as OpenVPN does.
via-file: a 0600 temp file with two lines (username, password), its path the last
argument, removed afterwards. via-env: the password is in the environment as `password`.
As in OpenVPN 2.6 the script may defer: exit status 2, then "1" or "0" written into
`$auth_control_file` later (by a process it started), within the same time; and it may
write a reason for the client into `$auth_failed_reason_file`. (`$auth_pending_file` is
offered but not read: no AUTH_PENDING is sent, so a deferral must fit the time.)
The password is never logged; the username is made printable first (OpenVPN replaces
other characters too), since it reaches the environment and the logs.
"""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
from collections.abc import Mapping

import trio

from trivpn.records import dataclass
from trivpn.server.config_model import AuthScript
from trivpn.server.scripts import run_script

__all__ = ["ScriptVerdict", "printable_username", "run_verify", "script_env", "verify_password"]

log = logging.getLogger("trivpn.server")

#: The longest username/password handed to a script (OpenVPN's USER_PASS_LEN is 128).
MAX_CREDENTIAL = 4096


def printable_username(name: str) -> str:
    """Characters outside printable ASCII become '_' (env values and log lines stay sane)."""
    return "".join(c if " " <= c <= "~" else "_" for c in name[:MAX_CREDENTIAL])


def script_env(
    username: str, subject: str, addr: tuple[str, int], password: str | None,
    base: Mapping[str, str] | None = None, *, common_name: str = "",
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
    if common_name:  # the certificate's own CN; none without a certificate (as OpenVPN)
        env["common_name"] = common_name
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


@dataclass(frozen=True, slots=True)
class ScriptVerdict:
    """The script's answer: `why` None means accepted; `reason` is what it wrote into
    auth_failed_reason_file (sent to the client in AUTH_FAILED)."""

    why: str | None
    reason: str = ""


#: The files a (deferring) script may write: its verdict, a reason, a pending request.
AUTH_FILES = ("auth_control_file", "auth_failed_reason_file", "auth_pending_file")
#: How often a deferred verdict's file is looked at.
DEFERRED_POLL = 0.25
#: The longest auth_failed_reason_file text passed on.
MAX_REASON = 200


def _read_small(path: str, limit: int = 4096) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(limit)
    except OSError:
        return ""


async def _deferred(control: str, seconds: float) -> str | None:
    """Exit status 2: the verdict comes later, as "1" or "0" in auth_control_file."""
    with trio.move_on_after(seconds):
        while True:
            answer = (await trio.to_thread.run_sync(_read_small, control, 16)).strip()
            if answer in ("0", "1"):
                return None if answer == "1" else "the auth-user-pass-verify script said no (deferred)"
            await trio.sleep(DEFERRED_POLL)
    return f"the deferred authentication did not answer within {seconds:g} s"


async def verify_password(
    script: AuthScript, username: str, password: str, subject: str, addr: tuple[str, int],
    seconds: float, base: Mapping[str, str] | None = None, *, tmp_dir: str | None = None,
    common_name: str = "",
) -> str | None:
    """None when the script accepts the client, else why not (one line, no password)."""
    return (await run_verify(script, username, password, subject, addr, seconds, base, tmp_dir=tmp_dir,
                             common_name=common_name)).why


async def run_verify(
    script: AuthScript, username: str, password: str, subject: str, addr: tuple[str, int],
    seconds: float, base: Mapping[str, str] | None = None, *, tmp_dir: str | None = None,
    common_name: str = "",
) -> ScriptVerdict:
    """Run the script (see the module docstring), within `seconds` in all: exit 0 accepts,
    2 defers to `auth_control_file`, anything else refuses; `auth_failed_reason_file`
    becomes the AUTH_FAILED reason."""
    if "\0" in password or len(password) > MAX_CREDENTIAL:
        return ScriptVerdict("malformed password")
    try:
        shlex.split(script.command)
    except ValueError as exc:
        return ScriptVerdict(f"cannot split the auth-user-pass-verify command: {exc}")
    env = script_env(username, subject, addr, password if script.method == "via-env" else None, base,
                     common_name=common_name)
    temps: list[str] = []
    args: list[str] = []
    deadline = trio.current_time() + seconds
    try:
        for name in AUTH_FILES:
            fd, env[name] = tempfile.mkstemp(prefix="trivpn-ac-", dir=tmp_dir)  # mode 0600
            os.close(fd)
            temps.append(env[name])
        if script.method == "via-file":
            fd, path = tempfile.mkstemp(prefix="trivpn-up-", dir=tmp_dir)  # mode 0600
            temps.append(path)
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
                f.write(f"{printable_username(username)}\n{password}\n")
            args.append(path)
        status = await run_script(script.command, args, env, seconds)
        why: str | None = None
        if status is None and trio.current_time() < deadline:  # run_script logged why
            why = "the auth-user-pass-verify script could not run"
        elif status is None:
            why = f"the auth-user-pass-verify script did not answer within {round(seconds, 1):g} s"
        elif status == 2:
            why = await _deferred(env["auth_control_file"], max(0.0, deadline - trio.current_time()))
        elif status != 0:
            why = f"the auth-user-pass-verify script said no (exit status {status})"
        reason = ""
        if why is not None:
            text = _read_small(env["auth_failed_reason_file"], MAX_REASON * 4).strip().splitlines()
            reason = printable_username(text[0])[:MAX_REASON].replace(",", ";") if text else ""
        return ScriptVerdict(why, reason)
    except OSError as exc:
        return ScriptVerdict(f"the auth-user-pass-verify script could not run: {exc.strerror or exc}")
    finally:
        for temp in temps:
            try:
                os.unlink(temp)
            except OSError:
                pass
