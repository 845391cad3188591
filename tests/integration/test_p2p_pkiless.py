"""Point-to-point TLS mode and PKI-less `peer-fingerprint`, against Debian's openvpn 2.6.

* p2p: a `tls-client` profile without `pull` (addresses from `ifconfig`/`ifconfig-ipv6`)
  against `openvpn --tls-server --ifconfig 10.9.0.1 10.9.0.2` (no `mode server`). Both ends
  must settle the same data cipher (the TLS server's preference), key derivation and peer-id
  by P2P NCP: openvpn logs its result, trivpn logs its own, they must agree, and pings go
  through both ways; `comp-lzo no` on both ends keeps its framing; when the peer restarts,
  trivpn's ping-restart brings the tunnel back.
* PKI-less: both ends use self-signed certificates and trust each other by `peer-fingerprint`
  alone (no `ca` anywhere). The right fingerprint gives a tunnel and pings; a wrong one never
  does, and the client keeps retrying instead of exiting (fail-open rules, docs/security.md).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_p2p import (
    P2P_LOCAL_V4,
    P2P_LOCAL_V6,
    P2P_PEER_V4,
    P2P_PEER_V6,
    READY_LINE,
    ConfigPeer,
    p2p_config,
    pkiless_server_config,
)
from trivpn.testing.pki import PKI, self_signed
from trivpn.testing.process import wait_for_text, wait_until

pytestmark = pytest.mark.root

PORT = 1194
#: openvpn's own line, e.g. "P2P mode NCP negotiation result: TLS_export=1, DATA_v2=1,
#: peer-id 1234, cipher=AES-128-GCM"
OPENVPN_NCP = re.compile(r"P2P mode NCP negotiation result: TLS_export=(\d), DATA_v2=(\d), peer-id (\d+), "
                         r"(?:epoch=\d, )?cipher=(\S+)")
TRIVPN_NCP = re.compile(r"P2P NCP: cipher (\S+), (\S+), peer-id (\S+)")


def _inline(tag: str, pem: str) -> list[str]:
    return [f"<{tag}>", pem.strip(), f"</{tag}>"]


def _connect(netns: NetnsPair, profile: Path, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    return netns.client.popen([sys.executable, "-m", "trivpn", "connect", str(profile), "--no-dns", *flags],
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
def peer_dir(tmp_path: Path) -> Iterator[list[ConfigPeer]]:
    peers: list[ConfigPeer] = []
    yield peers
    for p in peers:
        p.stop()


def _ping(netns: NetnsPair, *, from_client: bool, address: str) -> None:
    ns = netns.client if from_client else netns.server
    r = ns.run(["ping", "-c", "2", "-W", "2", address], check=False)
    assert r.returncode == 0, r.stdout


# (peer data-ciphers, our data-ciphers, --key-derivation, expected cipher, extra lines for both)
P2P_CASES = {
    "server-preference-ekm": ("CHACHA20-POLY1305:AES-128-GCM", "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
                              "auto", "CHACHA20-POLY1305", []),
    "common-subset-prf-comp-lzo-no": ("AES-256-GCM:AES-128-GCM", "AES-128-GCM:CHACHA20-POLY1305", "prf",
                                      "AES-128-GCM", ["comp-lzo no"]),
}


@pytest.mark.parametrize("case", list(P2P_CASES))
def test_p2p_tls_mode_against_openvpn(
    case: str, pki: PKI, netns: NetnsPair, peer_dir: list[ConfigPeer], tmp_path: Path
) -> None:
    theirs, ours, kd, expected, both = P2P_CASES[case]
    work = tmp_path / "peer"
    peer = ConfigPeer(netns.server, work, {"ca.crt": pki.ca_cert, "peer.crt": pki.server_cert,
                                           "peer.key": pki.server_key, "ta.key": pki.static_key})
    peer_dir.append(peer)
    peer.start(p2p_config(dev=peer.dev, local=netns.server_v4, port=PORT, data_ciphers=theirs, workdir=work,
                          extra=both))
    profile = tmp_path / "p2p.ovpn"
    profile.write_text("\n".join([
        "tls-client", "dev tun", "proto udp", f"remote {netns.server_v4} {PORT}", "nobind",
        f"ifconfig {P2P_LOCAL_V4} {P2P_PEER_V4}", f"ifconfig-ipv6 {P2P_LOCAL_V6}/64 {P2P_PEER_V6}",
        "remote-cert-tls server", f"data-ciphers {ours}", "keepalive 10 60",
        *_inline("ca", pki.ca_cert), *_inline("cert", pki.client_cert), *_inline("key", pki.client_key),
        *_inline("tls-crypt", pki.static_key), *both,
    ]) + "\n")
    log = tmp_path / "client.log"
    proc = _connect(netns, profile, log, "-v", "--key-derivation", kd)
    try:
        text = wait_for_text(log, "tunnel up", 30)
        wait_until(lambda: READY_LINE in peer.log_text(), 15, "openvpn p2p peer up")
        theirs_m = OPENVPN_NCP.search(peer.log_text())
        ours_m = TRIVPN_NCP.search(text)
        assert theirs_m and ours_m, (peer.log_text()[-3000:], text[-3000:])
        export, data_v2, their_peer_id, their_cipher = theirs_m.groups()
        our_cipher, derivation, our_peer_id = ours_m.groups()
        assert their_cipher == our_cipher == expected
        assert (export == "1") == (derivation == "tls-ekm") == (kd != "prf")
        assert data_v2 == "1" and our_peer_id == their_peer_id
        if kd == "prf":
            assert int(their_peer_id) == 0x76706E
        _ping(netns, from_client=True, address=P2P_PEER_V4)
        _ping(netns, from_client=False, address=P2P_LOCAL_V4)
        _ping(netns, from_client=True, address=P2P_PEER_V6)
    finally:
        rc = _stop(proc)
    assert rc == 0, log.read_text(errors="replace")[-3000:]


@pytest.mark.parametrize("wrong", ["none", "client-side", "server-side"])
def test_pkiless_peer_fingerprint(
    wrong: str, pki: PKI, netns: NetnsPair, peer_dir: list[ConfigPeer], tmp_path: Path
) -> None:
    server, client, stranger = self_signed("pkiless-server"), self_signed("pkiless-client"), self_signed("x")
    work = tmp_path / "server"
    peer = ConfigPeer(netns.server, work, {"peer.crt": server.cert, "peer.key": server.key,
                                           "ta.key": pki.static_key})
    peer_dir.append(peer)
    allowed = stranger.fingerprint if wrong == "server-side" else client.fingerprint
    peer.start(pkiless_server_config(dev=peer.dev, local=netns.server_v4, port=PORT,
                                     client_fingerprint=allowed, workdir=work), ready=READY_LINE)
    pinned = stranger.fingerprint if wrong == "client-side" else server.fingerprint
    profile = tmp_path / "pkiless.ovpn"
    profile.write_text("\n".join([
        "client", "dev tun", "proto udp", f"remote {netns.server_v4} {PORT}", "nobind",
        *_inline("cert", client.cert), *_inline("key", client.key), *_inline("tls-crypt", pki.static_key),
        *_inline("peer-fingerprint", pinned),
        "hand-window 8",  # a refused client hears nothing (openvpn sends no alert): retry soon
    ]) + "\n")
    assert "<ca>" not in profile.read_text()
    log = tmp_path / "client.log"
    proc = _connect(netns, profile, log, "-v")
    try:
        if wrong == "none":
            wait_for_text(log, "tunnel up", 30)
            _ping(netns, from_client=True, address="10.202.0.1")
        else:
            # refused, then retried: at least two attempts, and the client is still running
            needle = "peer-fingerprint does not match" if wrong == "client-side" else "reconnecting in"
            text = wait_for_text(log, needle, 60, count=2)
            assert "tunnel up" not in text
            assert proc.poll() is None, text[-3000:]
    finally:
        rc = _stop(proc)
    assert rc == 0, log.read_text(errors="replace")[-3000:]


def test_p2p_reconnects_after_the_peer_restarts(
    pki: PKI, netns: NetnsPair, peer_dir: list[ConfigPeer], tmp_path: Path
) -> None:
    """The openvpn peer goes away and comes back: ping-restart, a fresh P2P NCP, pings again."""
    work = tmp_path / "peer"
    peer = ConfigPeer(netns.server, work, {"ca.crt": pki.ca_cert, "peer.crt": pki.server_cert,
                                           "peer.key": pki.server_key, "ta.key": pki.static_key})
    peer_dir.append(peer)
    config = p2p_config(dev=peer.dev, local=netns.server_v4, port=PORT, data_ciphers="AES-256-GCM", workdir=work)
    peer.start(config)
    profile = tmp_path / "p2p.ovpn"
    profile.write_text("\n".join([
        "tls-client", "dev tun", "proto udp", f"remote {netns.server_v4} {PORT}", "nobind",
        f"ifconfig {P2P_LOCAL_V4} {P2P_PEER_V4}", "remote-cert-tls server", "keepalive 2 8",
        *_inline("ca", pki.ca_cert), *_inline("cert", pki.client_cert), *_inline("key", pki.client_key),
        *_inline("tls-crypt", pki.static_key),
    ]) + "\n")
    log = tmp_path / "client.log"
    proc = _connect(netns, profile, log, "-v")
    try:
        wait_for_text(log, "tunnel up", 30)
        wait_until(lambda: READY_LINE in peer.log_text(), 15, "openvpn p2p peer up")
        _ping(netns, from_client=True, address=P2P_PEER_V4)
        peer.stop()
        peer.log_path.unlink()
        peer.start(config)
        wait_for_text(log, "P2P NCP: cipher AES-256-GCM", 40, count=2)
        wait_until(lambda: READY_LINE in peer.log_text(), 15, "openvpn p2p peer up again")
        _ping(netns, from_client=True, address=P2P_PEER_V4)
        _ping(netns, from_client=False, address=P2P_LOCAL_V4)
        assert proc.poll() is None
    finally:
        rc = _stop(proc)
    assert rc == 0, log.read_text(errors="replace")[-3000:]
