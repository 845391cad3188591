"""`trivpn serve` with Debian's openvpn 2.6 as the client: tls-crypt-v2, UDP over IPv6,
topology net30, and a client whose source address changes (float).

Each case writes a server config a user could have written for OpenVPN, runs
`python -m trivpn serve` in the server namespace and `openvpn` in the client namespace, and
pings through the tunnel both ways; SIGINT must end the server with exit 0.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers.servens import (
    UP_TIMEOUT,
    openvpn_client,
    ping,
    ptp_pair,
    stop_server,
    trivpn_serve,
    tunnel_address,
    write_server_files,
)

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import ServerOptions
from trivpn.testing.pki import PKI
from trivpn.testing.process import read_until, wait_for_text, wait_until

pytestmark = pytest.mark.root

PORT = 1194


def server_conf(pki: PKI, workdir: Path, lines: list[str]) -> Path:
    write_server_files(pki, workdir)
    conf = workdir / "server.conf"
    conf.write_text("\n".join([
        f"port {PORT}", "dev tun", "keepalive 10 60", "ca ca.crt", "cert server.crt", "key server.key",
        "dh none", "data-ciphers AES-256-GCM", "verb 3", *lines,
    ]) + "\n")
    return conf


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_tls_crypt_v2_client_keys_made_by_openvpn(netns: NetnsPair, pki: PKI, tmp_path: Path, proto: str) -> None:
    """The client key comes from `openvpn --genkey tls-crypt-v2-client`. Over UDP the 2.6
    client does early negotiation, so the server keeps its stateless cookie reset
    (RESEND_WKC); over TCP the server opens the key from the connection's first packet."""
    srv_key, cli_key = tmp_path / "v2server.key", tmp_path / "v2client.key"
    subprocess.run(["openvpn", "--genkey", "tls-crypt-v2-server", str(srv_key)], check=True, capture_output=True)
    subprocess.run(["openvpn", "--tls-crypt-v2", str(srv_key), "--genkey", "tls-crypt-v2-client", str(cli_key)],
                   check=True, capture_output=True)
    conf = server_conf(pki, tmp_path, [
        "proto " + ("tcp-server" if proto == "tcp" else "udp"), f"local {netns.server_v4}", "topology subnet",
        "server 10.8.0.0 255.255.255.0", "server-ipv6 fd00:8::/64", f"tls-crypt-v2 {srv_key.name}", "reneg-sec 4",
    ])
    opts = ServerOptions(proto=proto, wrap="none", data_ciphers="AES-256-GCM", port=PORT)
    v2_block = ("<tls-crypt-v2>", cli_key.read_text().strip(), "</tls-crypt-v2>")
    with trivpn_serve(netns.server, conf) as serve, openvpn_client(
        netns.client, pki, netns.server_v4, tmp_path, "client", opts, extra=v2_block
    ) as log:
        text = log.read_text(errors="replace")
        assert "tls_crypt_v2_file = '[INLINE]'" in text and "Data Channel: cipher 'AES-256-GCM'" in text
        assert tunnel_address(log) == "10.8.0.2"
        read_until(serve, "ready:", UP_TIMEOUT)
        ping(netns.client, "10.8.0.1")
        ping(netns.server, "10.8.0.2")
        ping(netns.client, "fd00:8::1")
        ping(netns.server, "fd00:8::1000")
        # a renegotiation (reneg-sec 4) runs under dyn-tls-crypt, keyed from this client's Kc
        wait_until(lambda: log.read_text(errors="replace").count("Control Channel: TLS") >= 2, 20,
                   "a second TLS handshake (renegotiation) in the client log")
        ping(netns.client, "10.8.0.1")
        stop_server(serve)
        wait_for_text(log, "SIGUSR1", UP_TIMEOUT)


def test_udp_over_ipv6_transport(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    """`proto udp6` on the server's v6 address; the client connects with `proto udp6`."""
    conf = server_conf(pki, tmp_path, [
        "proto udp6", f"local {netns.server_v6}", "topology subnet", "server 10.8.0.0 255.255.255.0",
        "server-ipv6 fd00:8::/64", "tls-crypt ta.key",
    ])
    opts = ServerOptions(proto="udp6", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=PORT)
    with trivpn_serve(netns.server, conf) as serve, openvpn_client(
        netns.client, pki, netns.server_v6, tmp_path, "client", opts
    ) as log:
        text = log.read_text(errors="replace")
        assert f"[AF_INET6]{netns.server_v6}" in text, text[-3000:]
        assert tunnel_address(log) == "10.8.0.2"
        read_until(serve, "ready:", UP_TIMEOUT)
        ping(netns.client, "10.8.0.1")
        ping(netns.server, "10.8.0.2")
        ping(netns.client, "fd00:8::1")
        ping(netns.server, "fd00:8::1000")
        stop_server(serve)


def test_topology_net30(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    """net30: the server is 10.9.0.1 (peer .2), the first client gets 10.9.0.6 with peer
    10.9.0.5 (reference openvpn-server.md §1.5) and a route to the server's address."""
    conf = server_conf(pki, tmp_path, [
        "proto udp", f"local {netns.server_v4}", "topology net30", "server 10.9.0.0 255.255.255.0",
        "tls-crypt ta.key",
    ])
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=PORT)
    with trivpn_serve(netns.server, conf) as serve, openvpn_client(
        netns.client, pki, netns.server_v4, tmp_path, "client", opts
    ) as log:
        assert ptp_pair(log) == ("10.9.0.6", "10.9.0.5"), log.read_text(errors="replace")[-3000:]
        read_until(serve, "ready:", UP_TIMEOUT)
        ping(netns.client, "10.9.0.1")
        ping(netns.server, "10.9.0.6")
        stop_server(serve)


def test_float_when_the_client_address_changes(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    """The client machine's address changes mid-session (a second address takes over and the
    old one is deleted): its next data packet moves the session there, the server's replies
    follow (the old address no longer exists), and the status file shows the new address."""
    status = tmp_path / "status.log"
    conf = server_conf(pki, tmp_path, [
        "proto udp", f"local {netns.server_v4}", "topology subnet", "server 10.8.0.0 255.255.255.0",
        "tls-crypt ta.key", f"status {status} 1", "status-version 2",
    ])
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=PORT)
    new_addr = "10.201.0.3"
    with trivpn_serve(netns.server, conf) as serve, openvpn_client(
        netns.client, pki, netns.server_v4, tmp_path, "client", opts
    ) as log:
        read_until(serve, "ready:", UP_TIMEOUT)
        ping(netns.client, "10.8.0.1")
        wait_until(lambda: f",{netns.client_v4}:" in status.read_text(), 5, "the first address in the status")
        for argv in (
            ["sysctl", "-q", "-w", "net.ipv4.conf.veth0.promote_secondaries=1"],
            ["ip", "addr", "add", f"{new_addr}/24", "dev", "veth0"],
            ["ip", "addr", "del", f"{netns.client_v4}/24", "dev", "veth0"],
        ):
            netns.client.run(argv)
        ping(netns.client, "10.8.0.1", count=5)  # the first of these floats the session
        ping(netns.server, "10.8.0.2")
        read_until(serve, "floated from", 5)
        wait_until(lambda: f",{new_addr}:" in status.read_text(), 5, "the new address in the status")
        assert "Inactivity timeout" not in log.read_text(errors="replace")
        stop_server(serve)
