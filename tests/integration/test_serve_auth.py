"""`trivpn serve` with auth-user-pass-verify (via-file), Debian's real openvpn 2.6 as client.

A shell script accepts one username/password pair. A client with the wrong password must
get AUTH_FAILED and exit (auth-retry none) while the server stays up; then a client with
the right one comes up and pings cross the tunnel; SIGINT ends the server with exit 0, and
the password is nowhere in the server's output.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.pki import PKI
from trivpn.testing.process import (
    namespace_state,
    read_until,
    rest_of_output,
    stop_process,
    wait_for_text,
)

pytestmark = pytest.mark.root

UP_TIMEOUT = 30.0
READY = "Initialization Sequence Completed"
OPTS = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=1194)
RIGHT = "Corr3ct-H0rse"
WRONG = "Wr0ng-Batt3ry"
SCRIPT = f"""#!/bin/sh
{{ IFS= read -r u; IFS= read -r p; }} < "$1"
[ "$script_type" = user-pass-verify ] && [ "$u" = alice ] && [ "$p" = {RIGHT} ]
"""


def _client(netns: NetnsPair, pki: PKI, tmp_path: Path, name: str, password: str) -> tuple[subprocess.Popen[bytes], Path]:
    creds = tmp_path / f"{name}.pass"
    creds.write_text(f"alice\n{password}\n")
    creds.chmod(0o600)
    profile = tmp_path / f"{name}.ovpn"
    profile.write_text(client_profile(pki, OPTS, netns.server_v4, extra=[f"auth-user-pass {creds}", "auth-retry none"]))
    log = tmp_path / f"{name}.log"
    log.write_text("")
    proc = netns.client.popen(
        ["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return proc, log


def test_openvpn_client_with_right_and_wrong_password(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    for name, text in {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
                       "ta.key": pki.static_key}.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    script = tmp_path / "verify.sh"
    script.write_text(SCRIPT)
    script.chmod(0o700)
    conf = tmp_path / "server.conf"
    conf.write_text("\n".join([
        "port 1194", "proto udp", "dev tun", "topology subnet", "server 10.8.0.0 255.255.255.0",
        f"local {netns.server_v4}", "keepalive 10 60", "ca ca.crt", "cert server.crt", "key server.key",
        "dh none", "tls-crypt ta.key", "data-ciphers AES-256-GCM", "script-security 2",
        f"auth-user-pass-verify {script} via-file",
    ]) + "\n")
    before = namespace_state(netns.server)
    serve = netns.server.popen(
        [sys.executable, "-m", "trivpn", "serve", str(conf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        read_until(serve, READY, UP_TIMEOUT)
        refused, refused_log = _client(netns, pki, tmp_path, "wrong", WRONG)
        try:
            refused.wait(timeout=UP_TIMEOUT)  # auth-retry none: AUTH_FAILED ends it
            text = refused_log.read_text(errors="replace")
            assert "AUTH_FAILED" in text and READY not in text, text[-3000:]
        finally:
            stop_process(refused)
        read_until(serve, "refused", UP_TIMEOUT)
        client, log = _client(netns, pki, tmp_path, "right", RIGHT)
        try:
            text = wait_for_text(log, READY, UP_TIMEOUT)
            assert "net_addr_v4_add: 10.8.0.2/24" in text, text[-3000:]
            read_until(serve, "ready:", UP_TIMEOUT)
            r = netns.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", "10.8.0.1"], check=False, timeout=20)
            assert r.returncode == 0, r.stdout + r.stderr
            serve.send_signal(signal.SIGINT)
            rc = serve.wait(timeout=10)
            out = rest_of_output(serve)
            assert rc == 0, out
        finally:
            stop_process(client)
    finally:
        stop_process(serve)
    assert RIGHT not in out and WRONG not in out
    assert namespace_state(netns.server) == before, out
