"""`trivpn serve` with `crl-verify FILE` and Debian's openvpn 2.6 as the client.

A client whose certificate is on the CRL is refused during the TLS handshake: the server
sends the alert (the openvpn client logs it at once instead of waiting out its hand-window),
ends only that session and keeps serving; a client with a valid certificate then connects
and pings the server through the tunnel.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from trivpn.testing.netns import Netns, NetnsPair
from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.pki import PKI, revoke, with_client
from trivpn.testing.process import read_until, stop_process, wait_for_text

pytestmark = pytest.mark.root

OPTS = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=1194)
UP_TIMEOUT = 30.0
READY = "Initialization Sequence Completed"
REVOKED_CN = "revoked-client"


def _server_conf(pki: PKI, workdir: Path, local: str, revoked: PKI) -> Path:
    files = {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
             "ta.key": pki.static_key, "crl.pem": revoke(pki, revoked.client_cert)}
    for name, text in files.items():
        (workdir / name).write_text(text)
        (workdir / name).chmod(0o600)
    conf = workdir / "server.conf"
    lines = [
        f"port {OPTS.port}", "proto udp", f"local {local}", "dev tun", "topology subnet",
        "server 10.8.0.0 255.255.255.0", "keepalive 10 60", "ca ca.crt", "cert server.crt",
        "key server.key", "dh none", "tls-crypt ta.key", f"data-ciphers {OPTS.data_ciphers}",
        "crl-verify crl.pem", "verb 3",
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


@contextmanager
def _started(ns: Netns, argv: list[str], **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = ns.popen(argv, stdin=subprocess.DEVNULL, **kw)
    try:
        yield proc
    finally:
        stop_process(proc)


def _openvpn(ns: Netns, pki: PKI, remote: str, workdir: Path, name: str) -> tuple[list[str], Path]:
    profile = workdir / f"{name}.ovpn"
    profile.write_text(client_profile(pki, OPTS, remote))
    log = workdir / f"{name}.log"
    log.write_text("")
    return ["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"], log


def test_revoked_openvpn_client_is_refused_and_a_valid_one_connects(
    netns: NetnsPair, pki: PKI, tmp_path: Path
) -> None:
    revoked = with_client(pki, REVOKED_CN)  # a fresh certificate (serial) on every call
    conf = _server_conf(pki, tmp_path, netns.server_v4, revoked)
    serve_argv = [sys.executable, "-m", "trivpn", "serve", str(conf)]
    with _started(netns.server, serve_argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                  cwd=conf.parent) as serve:
        read_until(serve, READY, UP_TIMEOUT)
        argv, log = _openvpn(netns.client, revoked, netns.server_v4, tmp_path, "revoked")
        with _started(netns.client, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            read_until(serve, "certificate revoked", UP_TIMEOUT)
            text = wait_for_text(log, "fatal SSL alert: certificate revoked", UP_TIMEOUT)
            assert READY not in text
        assert serve.poll() is None, "the server must stay up"
        argv, log = _openvpn(netns.client, pki, netns.server_v4, tmp_path, "valid")
        with _started(netns.client, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            wait_for_text(log, READY, UP_TIMEOUT)
            read_until(serve, "ready:", UP_TIMEOUT)
            r = netns.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", "10.8.0.1"], check=False, timeout=20)
            assert r.returncode == 0, f"ping through the tunnel: {r.stdout}{r.stderr}"
