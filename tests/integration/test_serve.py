"""`trivpn serve` with Debian's real openvpn 2.6 as the client, across network namespaces.

`python -m trivpn serve server.conf` runs in the server namespace (UDP + tls-crypt +
AES-256-GCM, or TCP + tls-auth + CHACHA20-POLY1305; topology subnet, server-ipv6,
keepalive), `openvpn --client` in a client namespace. The
client's tunnel must come up, pings (IPv4 and IPv6) must cross it both ways, and SIGINT must end the server
with exit 0, the client told the server is going away, and the server namespace's links,
addresses and routes as they were before. The second case puts two clients on two client
machines (namespaces) and pings between them through `client-to-client`. The first case
also checks the status file (`status FILE 1`, version 2) and SIGUSR2's report in the log.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
from helpers.servens import (
    GOODBYE_MARKS,
    SERVER_TUNNEL,
    TCP_TLSAUTH,
    UDP_TLSCRYPT,
    UP_TIMEOUT,
    openvpn_client,
    ping,
    server_conf,
    status_row,
    stop_server,
    trivpn_serve,
    tunnel_address,
)

from trivpn.testing.netns import NetnsPair, second_client
from trivpn.testing.ovpn_server import ServerOptions
from trivpn.testing.pki import PKI, common_name
from trivpn.testing.process import (
    namespace_state,
    read_until,
    wait_for_text,
    wait_until,
)

pytestmark = pytest.mark.root


@pytest.mark.parametrize("opts", [UDP_TLSCRYPT, TCP_TLSAUTH], ids=["udp-tlscrypt-aes256gcm", "tcp-tlsauth-chacha20"])
def test_openvpn_client_through_trivpn_serve(
    netns: NetnsPair, pki: PKI, tmp_path: Path, opts: ServerOptions
) -> None:
    before = namespace_state(netns.server)
    status = tmp_path / "status.log"
    extra = [f"local {netns.server_v4}", "server-ipv6 fd00:8::/64", f"status {status} 1", "status-version 2"]
    conf = server_conf(pki, tmp_path, extra, opts)
    with trivpn_serve(netns.server, conf) as serve, openvpn_client(
        netns.client, pki, netns.server_v4, tmp_path, "client", opts
    ) as log:
        assert f"Data Channel: cipher '{opts.data_ciphers}'" in log.read_text(errors="replace")
        client_ip = tunnel_address(log)
        assert client_ip == "10.8.0.2"
        read_until(serve, "ready:", UP_TIMEOUT)
        ping(netns.client, SERVER_TUNNEL)
        ping(netns.server, client_ip)
        ping(netns.client, "fd00:8::1")
        ping(netns.server, "fd00:8::1000")
        wait_until(lambda: status_row(status) is not None, 5, f"a client with traffic in {status}")
        row = status_row(status)
        assert row is not None and row[1] == common_name(pki.client_cert)
        assert row[2].startswith(f"{netns.client_v4}:") and row[3:5] == ["10.8.0.2", "fd00:8::1000"]
        assert row[-1] == opts.data_ciphers and stat.S_IMODE(os.stat(status).st_mode) == 0o600
        serve.send_signal(signal.SIGUSR2)
        read_until(serve, f"CLIENT_LIST,{row[1]},", 5)
        out = stop_server(serve)
        text = wait_for_text(log, "SIGUSR1", UP_TIMEOUT)
        assert any(mark in text for mark in GOODBYE_MARKS), text[-3000:]
    assert namespace_state(netns.server) == before, out


def test_two_openvpn_clients_and_client_to_client(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    """Two client machines, one certificate (duplicate-cn), a wildcard dual-stack socket."""
    with second_client(netns) as other:
        before = namespace_state(netns.server)
        conf = server_conf(pki, tmp_path, ["client-to-client", "duplicate-cn"])
        with trivpn_serve(netns.server, conf) as serve, openvpn_client(
            netns.client, pki, netns.server_v4, tmp_path, "one"
        ) as log1, openvpn_client(other, pki, "10.201.1.1", tmp_path, "two") as log2:
            ip1, ip2 = tunnel_address(log1), tunnel_address(log2)
            assert {ip1, ip2} == {"10.8.0.2", "10.8.0.3"}
            ping(netns.client, ip2)
            ping(other, ip1)
            ping(netns.server, ip1)
            ping(netns.server, ip2)
            out = stop_server(serve)
            for log in (log1, log2):
                text = wait_for_text(log, "SIGUSR1", UP_TIMEOUT)
                assert any(mark in text for mark in GOODBYE_MARKS), text[-3000:]
        assert namespace_state(netns.server) == before, out
