"""`trivpn serve` over a session's whole life, with real clients in namespaces.

* Debian's openvpn renegotiates every 2 s (server `reneg-sec 2`) while a steady ping runs
  through the tunnel: several new keys, no lost packet.
* `ifconfig-pool-persist`: two clients get .2 and .3; the server is restarted; the second
  client comes back alone and gets .3 again (not the free .2 a fresh pool would give).
* trivpn's own client (`trivpn connect`, kernel TUN) against `trivpn serve`: pings both ways.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.servens import (
    SERVER_TUNNEL,
    UDP_TLSCRYPT,
    UP_TIMEOUT,
    openvpn_client,
    ping,
    server_conf,
    stop_server,
    trivpn_serve,
    tunnel_address,
)

from trivpn.testing.netns import NetnsPair, second_client
from trivpn.testing.ovpn_server import client_profile
from trivpn.testing.pki import PKI, with_client
from trivpn.testing.process import read_until, stop_process

pytestmark = pytest.mark.root

#: Pings during the renegotiation test: 40 at 0.2 s spans four 2 s key lifetimes.
RENEG_PINGS = 40


def test_openvpn_client_renegotiates_every_2s_without_loss(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    conf = server_conf(pki, tmp_path, [f"local {netns.server_v4}", "reneg-sec 2"])
    with trivpn_serve(netns.server, conf) as serve, openvpn_client(
        netns.client, pki, netns.server_v4, tmp_path, "client"
    ) as log:
        r = netns.client.run(["ping", "-c", str(RENEG_PINGS), "-i", "0.2", "-W", "2", SERVER_TUNNEL],
                             check=False, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"{RENEG_PINGS} packets transmitted, {RENEG_PINGS} received, 0% packet loss" in r.stdout, r.stdout
        text = log.read_text(errors="replace")
        # Each new key is a fresh TLS handshake on the client: one per renegotiation.
        assert text.count("Control Channel: TLS") >= 4, text[-4000:]
        stop_server(serve)


def test_pool_persist_gives_the_same_address_after_a_restart(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    first, second = with_client(pki, "persist-a"), with_client(pki, "persist-b")
    conf = server_conf(pki, tmp_path, ["ifconfig-pool-persist ipp.txt 1"])  # every address: two links
    with second_client(netns) as other:
        with trivpn_serve(netns.server, conf) as serve:
            with openvpn_client(netns.client, first, netns.server_v4, tmp_path, "a") as log_a, \
                    openvpn_client(other, second, "10.201.1.1", tmp_path, "b") as log_b:
                assert (tunnel_address(log_a), tunnel_address(log_b)) == ("10.8.0.2", "10.8.0.3")
            stop_server(serve)
        ipp = (tmp_path / "ipp.txt").read_text()
        assert "persist-b,10.8.0.3," in ipp, ipp
        with trivpn_serve(netns.server, conf), openvpn_client(
            other, second, "10.201.1.1", tmp_path, "b-again"
        ) as log:
            assert tunnel_address(log) == "10.8.0.3"
            ping(other, SERVER_TUNNEL)


def test_trivpn_client_against_trivpn_serve(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    conf = server_conf(pki, tmp_path, [f"local {netns.server_v4}"])
    profile = tmp_path / "trivpn.ovpn"
    profile.write_text(client_profile(pki, UDP_TLSCRYPT, netns.server_v4))
    with trivpn_serve(netns.server, conf) as serve:
        client = netns.client.popen([sys.executable, "-m", "trivpn", "connect", str(profile)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            read_until(client, "tunnel up", UP_TIMEOUT)
            ping(netns.client, SERVER_TUNNEL)
            ping(netns.server, "10.8.0.2")
        finally:
            stop_process(client)
        stop_server(serve)


def test_a_long_push_reply_arrives_in_several_messages(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    """60 pushed routes (about 2 KB) exceed one PUSH_REPLY: openvpn must get every one."""
    routes = [f"10.{100 + i // 200}.{i % 200}.0" for i in range(60)]
    extra = [f"local {netns.server_v4}", *(f'push "route {net} 255.255.255.0"' for net in routes)]
    conf = server_conf(pki, tmp_path, extra)
    with trivpn_serve(netns.server, conf) as serve, openvpn_client(
        netns.client, pki, netns.server_v4, tmp_path, "client"
    ) as log:
        text = log.read_text(errors="replace")
        assert "push-continuation 2" in text, text[-3000:]
        table = netns.client.run(["ip", "route"], check=False, timeout=10).stdout
        missing = [net for net in routes if f"{net}/24 via 10.8.0.1" not in table]
        assert not missing, table
        ping(netns.client, SERVER_TUNNEL)
        stop_server(serve)
