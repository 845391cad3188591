"""client-connect / client-disconnect / learn-address: `trivpn serve` against Debian's
openvpn 2.6 *as a server*, with the same configuration file, script and client.

One dump script records its arguments and environment for every call. The real openvpn
server runs first, then `trivpn serve` with the very same server.conf; the same Debian
openvpn client connects to each, gets the route the client-connect script wrote into its
dynamic-config file, and leaves (explicit-exit-notify). Then the recorded calls are
compared: the same scripts in the same order with the same arguments, the same variable
names, and the same values wherever a value is deterministic. (One difference in timing:
openvpn reaps a gone client's routes lazily, minutes later; trivpn calls `learn-address
delete` right after client-disconnect.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import OpenVPNServer, ServerOptions, client_profile
from trivpn.testing.pki import PKI
from trivpn.testing.process import read_until, stop_process, wait_for_text, wait_until

pytestmark = pytest.mark.root

UP_TIMEOUT = 30.0
READY = "Initialization Sequence Completed"
USER = "alice"
DUMP = """#!/bin/sh
DUMPS='@DUMPS@'
n=$(cat "$DUMPS/.n" 2>/dev/null || echo 100)
echo $((n + 1)) > "$DUMPS/.n"
{ printf 'ARGS=%s\\n' "$*"; env; } > "$DUMPS/$n.$script_type"
if [ "$script_type" = client-connect ]; then
  printf 'push "route 192.168.99.0 255.255.255.0"\\n' > "$1"
fi
exit 0
"""
#: Values that differ from run to run (or between the two daemons by nature).
VOLATILE = {
    "daemon_pid", "daemon_start_time", "time_unix", "time_ascii", "time_duration", "trusted_port",
    "untrusted_port", "bytes_received", "bytes_sent", "client_connect_config_file",
    "daemon_log_redirect",  # 1 under openvpn's --log; trivpn has no --log
}
#: Names only one side has: PWD comes from /bin/sh; deferred client-connect is not served;
#: trivpn offers the deferred-authentication files to the verify script only, where openvpn
#: leaves their (by then removed) names in every later script's environment too.
ONE_SIDED = {
    "PWD", "client_connect_deferred_file", "auth_control_file", "auth_failed_reason_file", "auth_pending_file",
}


def _calls(dumps: Path) -> list[tuple[str, dict[str, str]]]:
    out = []
    for path in sorted(dumps.glob("[0-9]*.*"), key=lambda p: int(p.name.split(".")[0])):
        env = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        out.append((path.name.split(".", 1)[1], env))
    return out


def _profile(pki: PKI, opts: ServerOptions, remote: str, tmp: Path, with_cert: bool) -> str:
    """The client's profile: its certificate, or (verify-client-cert none) only a password."""
    if with_cert:
        return client_profile(pki, opts, remote, extra=["explicit-exit-notify 1"])
    creds = tmp / "creds.txt"
    creds.write_text(f"{USER}\nS3cret pass\n")
    creds.chmod(0o600)
    text = client_profile(pki, opts, remote, extra=["explicit-exit-notify 1", f"auth-user-pass {creds}"])
    return re.sub(r"<(cert|key)>.*?</\1>\n", "", text, flags=re.S)


def _connect_and_leave(
    netns: NetnsPair, pki: PKI, opts: ServerOptions, tmp: Path, name: str, dumps: Path, with_cert: bool
) -> str:
    profile = tmp / f"{name}.ovpn"
    profile.write_text(_profile(pki, opts, netns.server_v4, tmp, with_cert))
    assert ("<cert>" in profile.read_text()) == with_cert
    log = tmp / f"{name}.log"
    log.write_text("")
    client = netns.client.popen(["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        text = wait_for_text(log, READY, UP_TIMEOUT)
    finally:
        stop_process(client)  # SIGTERM: the client says goodbye (explicit-exit-notify)
    wait_until(lambda: any(dumps.glob("*.client-disconnect")), UP_TIMEOUT, f"{name}: client-disconnect")
    return text


def _deletes(dumps: Path) -> None:
    """trivpn forgets a gone client's routes at once: two `learn-address delete` calls."""
    wait_until(lambda: len(list(dumps.glob("*.learn-address"))) >= 4, UP_TIMEOUT, "learn-address deletes")


@pytest.mark.parametrize(("with_cert", "uacn"), [(True, False), (False, True), (False, False)],
                         ids=["certificate", "password-only", "password-only-no-common-name"])
def test_script_calls_match_openvpn_as_server(
    netns: NetnsPair, pki: PKI, tmp_path: Path, with_cert: bool, uacn: bool
) -> None:
    """With `with_cert` False the server says `verify-client-cert none` and the client has
    no certificate at all: a username and password checked by the (dumping) verify script,
    which also names the client (username-as-common-name)."""
    script = tmp_path / "dump.sh"
    dumps = tmp_path / "dumps"
    script.write_text(DUMP.replace("@DUMPS@", str(dumps)))  # a delete's environment has no setenv
    script.chmod(0o755)
    dumps.mkdir()
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", extra=[
        "script-security 2", f"client-connect {script}", f"client-disconnect {script}",
        f"learn-address {script}", "setenv FOO 'bar baz'",
    ] + ([] if with_cert else [
        "verify-client-cert none", f"auth-user-pass-verify {script} via-file",
    ] + (["username-as-common-name"] if uacn else [])))
    workdir = tmp_path / "server"
    reference = OpenVPNServer(netns.server, pki, opts, workdir, listen_v4=netns.server_v4)
    reference.start()
    try:
        ref_log = _connect_and_leave(netns, pki, opts, tmp_path, "ref", dumps, with_cert)
    finally:
        reference.stop()
    ref_dumps = tmp_path / "ref-dumps"
    shutil.move(dumps, ref_dumps)
    dumps.mkdir()
    serve = netns.server.popen([sys.executable, "-m", "trivpn", "serve", str(reference.config_path)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               cwd=workdir)
    try:
        read_until(serve, READY, UP_TIMEOUT)
        ours_log = _connect_and_leave(netns, pki, opts, tmp_path, "ours", dumps, with_cert)
    finally:
        stop_process(serve)
    _deletes(dumps)
    for text in (ref_log, ours_log):  # the client-connect file's push reached the client
        assert "route 192.168.99.0 255.255.255.0" in text, text[-3000:]
    ref, ours = _calls(ref_dumps), _calls(dumps)
    # openvpn reaps a gone client's routes lazily (seconds to minutes; maybe only at its
    # stop), trivpn at once: openvpn's deletes are compared when it made them in time
    n = 1 + [kind for kind, _ in ref].index("client-disconnect")
    ref_deletes, ours_deletes = ref[n:], ours[n:]
    assert [env["ARGS"] for _, env in ours_deletes] == ["delete 10.202.0.2", "delete fd00:202::1000"]
    if ref_deletes:  # in hash-bucket order there
        ref_deletes = sorted(ref_deletes, key=lambda call: call[1]["ARGS"])
        ref, ours = ref[:n] + ref_deletes, ours[:n] + ours_deletes[: len(ref_deletes)]
    else:
        ref, ours = ref[:n], ours[:n]
    temp_arg = ("client-connect", "user-pass-verify")
    assert [(kind, env["ARGS"]) for kind, env in ours if kind not in temp_arg] == [
        (kind, env["ARGS"]) for kind, env in ref if kind not in temp_arg
    ]
    assert [kind for kind, _ in ours] == [kind for kind, _ in ref]
    for (kind, mine), (_, theirs) in zip(ours, ref, strict=True):
        assert set(mine) - ONE_SIDED == set(theirs) - ONE_SIDED, kind
        differ = {k for k in mine if k not in VOLATILE | ONE_SIDED | {"ARGS"} and mine[k] != theirs.get(k)}
        assert not differ, {k: (mine[k], theirs.get(k)) for k in differ}
        if kind == "user-pass-verify":  # via-file: one argument, a temporary file
            assert len(mine["ARGS"].split()) == len(theirs["ARGS"].split()) == 1
        if kind == "client-connect":  # one argument: the file, also named in the environment
            assert mine["ARGS"] == mine["client_connect_config_file"]
            assert theirs["ARGS"] == theirs["client_connect_config_file"]
    connect = next(env for kind, env in ours if kind == "client-connect")
    assert connect["FOO"] == "bar baz" and connect["trusted_ip"] == netns.client_v4
    if not with_cert:
        assert connect["username"] == USER and "tls_id_0" not in connect
        assert connect.get("common_name") == (USER if uacn else None)  # openvpn: UNDEF only in arguments
