"""Secrets and TLS options of `trivpn connect` against Debian's openvpn server.

* A server pushes an `auth-token`: at the highest verbosity the token appears nowhere in
  trivpn's output (OpenVPN sanitises its logs the same way).
* `peer-fingerprint` instead of a CA: the client trusts the real server by its
  certificate's SHA-256 fingerprint alone; a wrong fingerprint never brings a tunnel up.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import OpenVPNServer, ServerOptions, client_profile
from trivpn.testing.pki import PKI
from trivpn.testing.process import wait_for_text

pytestmark = pytest.mark.root

TOKEN = "SESS_ID_AT_tok3nTrivpnMustNeverPrint"


def _connect(netns: NetnsPair, profile: Path, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    return netns.client.popen([sys.executable, "-m", "trivpn", "connect", str(profile), "--no-dns", *flags],
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_pushed_auth_token_never_in_the_output(
    pki: PKI, netns: NetnsPair, openvpn_server: Callable[[ServerOptions], OpenVPNServer], tmp_path: Path
) -> None:
    opts = ServerOptions(proto="udp", wrap="tls-crypt", extra=[f'push "auth-token {TOKEN}"'])
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, extra=["verb 11"]))
    log = tmp_path / "client.log"
    proc = _connect(netns, profile, log, "-v", "-v", "--debug")
    try:
        text = wait_for_text(log, "tunnel up", 30)
        assert "auth-token [redacted]" in text  # the token was pushed and the line logged
    finally:
        _stop(proc)
    text = log.read_text(errors="replace")
    assert TOKEN not in text and "tok3n" not in text, text[-3000:]


def _fingerprint(pem: str) -> str:
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


@pytest.mark.parametrize("right", [True, False])
def test_peer_fingerprint_instead_of_a_ca(
    right: bool, pki: PKI, netns: NetnsPair, openvpn_server: Callable[[ServerOptions], OpenVPNServer],
    tmp_path: Path,
) -> None:
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    server = openvpn_server(opts)
    text = client_profile(pki, opts, server.remote_host)
    text = re.sub(r"<ca>.*?</ca>\n", "", text, flags=re.S)
    assert "<ca>" not in text and "\nca " not in text
    fp = _fingerprint(pki.server_cert) if right else _fingerprint(pki.client_cert)
    profile = tmp_path / "client.ovpn"
    profile.write_text(text + f"<peer-fingerprint>\n{fp}\n</peer-fingerprint>\n")
    log = tmp_path / "client.log"
    proc = _connect(netns, profile, log)
    try:
        if right:
            wait_for_text(log, "tunnel up", 30)
            r = netns.client.run(["ping", "-c", "2", "-W", "2", server.tunnel_v4], check=False)
            assert r.returncode == 0, r.stdout
        else:
            out = wait_for_text(log, "peer-fingerprint does not match", 30)
            assert "tunnel up" not in out
    finally:
        _stop(proc)
