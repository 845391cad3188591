"""`trivpn pki` output used as-is by real peers, in network namespaces.

* tls-crypt: `trivpn pki init` + two `trivpn pki client` profiles, `trivpn serve
  DIR/server.conf`, Debian's `openvpn --config alice.ovpn` pings through; after
  `trivpn pki revoke DIR alice` (server still running) alice is refused on reconnect and
  bob connects and pings.
* tls-crypt-v2: the same files served by Debian's openvpn (`openvpn --config server.conf`)
  and then by `trivpn serve`, with one client on Debian's openvpn and one on `trivpn ping`,
  each with its own per-client key; revoked alice is refused, bob still connects.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers.servens import READY, UP_TIMEOUT, trivpn_serve

from trivpn.testing.netns import Netns, NetnsPair
from trivpn.testing.process import read_until, stop_process, wait_for_text

pytestmark = pytest.mark.root

SERVER_NAME = "vpn.pki-test.example"
SERVER_TUNNEL = "10.8.0.1"


def _trivpn(*argv: str) -> str:
    r = subprocess.run([sys.executable, "-m", "trivpn", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _make_pki(tmp_path: Path, remote: str, *extra: str) -> Path:
    root = tmp_path / "pki"
    _trivpn("pki", "init", str(root), "--name", SERVER_NAME, *extra)
    for name in ("alice", "bob"):
        _trivpn("pki", "client", str(root), name, "--remote", remote)
    return root


@contextmanager
def _openvpn(ns: Netns, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    log.write_text("")
    proc = ns.popen(["openvpn", "--config", str(config), "--log", str(log), "--verb", "4"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop_process(proc)


def _ping(ns: Netns) -> None:
    r = ns.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", SERVER_TUNNEL], check=False, timeout=20)
    assert r.returncode == 0, f"ping through the tunnel: {r.stdout}{r.stderr}"


def test_pki_made_server_and_openvpn_client_then_revoke(netns: NetnsPair, tmp_path: Path) -> None:
    root = _make_pki(tmp_path, netns.server_v4)
    clients = root / "clients"
    with trivpn_serve(netns.server, root / "server.conf") as serve:
        with _openvpn(netns.client, clients / "alice.ovpn", tmp_path / "alice1.log"):
            text = wait_for_text(tmp_path / "alice1.log", READY, UP_TIMEOUT)
            assert f"VERIFY X509NAME OK: CN={SERVER_NAME}" in text
            _ping(netns.client)
        out = _trivpn("pki", "revoke", str(root), "alice")
        assert "revoked alice" in out
        with _openvpn(netns.client, clients / "alice.ovpn", tmp_path / "alice2.log"):
            read_until(serve, "certificate revoked", UP_TIMEOUT)
            text = wait_for_text(tmp_path / "alice2.log", "certificate revoked", UP_TIMEOUT)
            assert READY not in text
        assert serve.poll() is None, "the server must keep serving"
        with _openvpn(netns.client, clients / "bob.ovpn", tmp_path / "bob.log"):
            wait_for_text(tmp_path / "bob.log", READY, UP_TIMEOUT)
            _ping(netns.client)


def test_tls_crypt_v2_files_with_openvpn_server_and_both_clients(netns: NetnsPair, tmp_path: Path) -> None:
    root = _make_pki(tmp_path, netns.server_v4, "--tls-crypt-v2")
    clients = root / "clients"
    with _openvpn(netns.server, root / "server.conf", tmp_path / "server.log"):
        wait_for_text(tmp_path / "server.log", READY, UP_TIMEOUT)
        with _openvpn(netns.client, clients / "alice.ovpn", tmp_path / "alice.log"):
            wait_for_text(tmp_path / "alice.log", READY, UP_TIMEOUT)
            _ping(netns.client)
        r = netns.client.run(
            [sys.executable, "-m", "trivpn", "ping", str(clients / "bob.ovpn"), SERVER_TUNNEL,
             "-c", "2", "-i", "0.2", "--connect-timeout", "30"], check=False, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "2 received" in r.stdout
    with trivpn_serve(netns.server, root / "server.conf"):
        with _openvpn(netns.client, clients / "alice.ovpn", tmp_path / "alice-t.log"):
            wait_for_text(tmp_path / "alice-t.log", READY, UP_TIMEOUT)
            _ping(netns.client)
        _trivpn("pki", "revoke", str(root), "alice")
        with _openvpn(netns.client, clients / "alice.ovpn", tmp_path / "alice-r.log"):
            wait_for_text(tmp_path / "alice-r.log", "certificate revoked", UP_TIMEOUT)
        r = netns.client.run(
            [sys.executable, "-m", "trivpn", "ping", str(clients / "bob.ovpn"), SERVER_TUNNEL,
             "-c", "2", "-i", "0.2", "--connect-timeout", "30"], check=False, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
