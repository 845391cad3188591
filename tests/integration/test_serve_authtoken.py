"""auth-gen-token in `trivpn serve`, with Debian's real openvpn 2.6 as the client.

The verify script counts its calls. The client authenticates once with its password, gets
an auth-token in the PUSH_REPLY and renegotiates (its reneg-sec 3); the server renews the
token every 4 s (`auth-gen-token 0 4`: a token is valid for 8 s; the client logs each
renewal as a PUSH_REPLY). Once the first token has
run out, the client reconnects (SIGUSR1) with the renewed token: it comes up again, pings
cross the tunnel, and the script was still called only once. At debug verbosity no token
ever reaches the server's output.

The token format is OpenVPN's: a token Debian's openvpn server issued is accepted by
`trivpn serve` with the same auth-gen-token-secret (the client moves over without the
script running again).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import OpenVPNServer, ServerOptions, client_profile
from trivpn.testing.pki import PKI
from trivpn.testing.process import read_until, rest_of_output, stop_process, wait_for_text

pytestmark = pytest.mark.root

UP_TIMEOUT = 30.0
READY = "Initialization Sequence Completed"
PUSHED = "PUSH: Received control message: 'PUSH_REPLY"
OPTS = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=1194)
RIGHT = "Corr3ct-H0rse"
SCRIPT = f"""#!/bin/sh
echo call >> '@CALLS@'
{{ IFS= read -r u; IFS= read -r p; }} < "$1"
[ "$u" = alice ] && [ "$p" = {RIGHT} ]
"""


def _calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_openvpn_client_renegotiates_and_reconnects_on_its_auth_token(
    netns: NetnsPair, pki: PKI, tmp_path: Path
) -> None:
    for name, text in {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
                       "ta.key": pki.static_key}.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    calls = tmp_path / "calls.txt"
    script = tmp_path / "verify.sh"
    script.write_text(SCRIPT.replace("@CALLS@", str(calls)))
    script.chmod(0o700)
    conf = tmp_path / "server.conf"
    conf.write_text("\n".join([
        "port 1194", "proto udp", "dev tun", "topology subnet", "server 10.8.0.0 255.255.255.0",
        f"local {netns.server_v4}", "keepalive 10 60", "ca ca.crt", "cert server.crt", "key server.key",
        "dh none", "tls-crypt ta.key", "data-ciphers AES-256-GCM", "script-security 2",
        f"auth-user-pass-verify {script} via-file", "auth-gen-token 0 4",
    ]) + "\n")
    creds = tmp_path / "client.pass"
    creds.write_text(f"alice\n{RIGHT}\n")
    creds.chmod(0o600)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, OPTS, netns.server_v4, extra=[
        f"auth-user-pass {creds}", "auth-retry none", "reneg-sec 3",
    ]))
    log = tmp_path / "client.log"
    log.write_text("")
    serve = netns.server.popen(
        [sys.executable, "-m", "trivpn", "serve", "-v", str(conf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    out = ""
    try:
        read_until(serve, READY, UP_TIMEOUT)
        client = netns.client.popen(
            ["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_text(log, READY, UP_TIMEOUT)
            assert _calls(calls) == 1
            # the client renegotiated (a second TLS handshake) on its token, and the server
            # renewed the token three times: the first one (valid 8 s) is no more by now
            wait_for_text(log, "Control Channel: TLS", UP_TIMEOUT, count=2)
            wait_for_text(log, PUSHED, UP_TIMEOUT, count=4)
            client.send_signal(signal.SIGUSR1)  # reconnect, with the renewed token
            text = wait_for_text(log, READY, UP_TIMEOUT, count=2)
            assert "AUTH_FAILED" not in text, text[-3000:]
            r = netns.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", "10.8.0.1"], check=False, timeout=20)
            assert r.returncode == 0, r.stdout + r.stderr
            assert _calls(calls) == 1, "the verify script ran again"
        finally:
            stop_process(client)
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=10) == 0
        out = rest_of_output(serve)
    finally:
        stop_process(serve)
    assert "authenticated by its auth-token" in out, out[-3000:]
    assert "SESS_ID_AT_" not in out and RIGHT not in out


def test_a_token_from_openvpn_as_server_is_accepted_by_trivpn_serve(
    netns: NetnsPair, pki: PKI, tmp_path: Path
) -> None:
    """Same `auth-gen-token-secret`, same configuration: the token Debian's openvpn server
    gave the client lets it in to `trivpn serve` after the switch, without the script."""
    secret = tmp_path / "token.key"
    subprocess.run(["openvpn", "--genkey", "auth-token", str(secret)], check=True, capture_output=True, timeout=30)
    calls = tmp_path / "calls.txt"
    script = tmp_path / "verify.sh"
    script.write_text(SCRIPT.replace("@CALLS@", str(calls)))
    script.chmod(0o700)
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", extra=[
        "script-security 2", f"auth-user-pass-verify {script} via-file", "auth-gen-token 0 600",
        f"auth-gen-token-secret {secret}",
    ])
    reference = OpenVPNServer(netns.server, pki, opts, tmp_path / "server", listen_v4=netns.server_v4)
    creds = tmp_path / "client.pass"
    creds.write_text(f"alice\n{RIGHT}\n")
    creds.chmod(0o600)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, netns.server_v4, extra=[f"auth-user-pass {creds}", "auth-retry none"]))
    log = tmp_path / "client.log"
    log.write_text("")
    reference.start()
    client = netns.client.popen(["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve = None
    try:
        wait_for_text(log, READY, UP_TIMEOUT)
        assert _calls(calls) == 1
        reference.stop()  # explicit-exit-notify: the client is told to reconnect
        serve = netns.server.popen(
            [sys.executable, "-m", "trivpn", "serve", str(reference.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
        read_until(serve, READY, UP_TIMEOUT)
        text = wait_for_text(log, READY, UP_TIMEOUT, count=2)
        assert "AUTH_FAILED" not in text, text[-3000:]
        assert _calls(calls) == 1, "trivpn serve did not accept openvpn's token"
        r = netns.client.run(["ping", "-c", "2", "-i", "0.2", "-W", "3", "10.202.0.1"], check=False, timeout=20)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        stop_process(client)
        reference.stop()
        if serve is not None:
            stop_process(serve)
