"""`trivpn serve` with client-config-dir, Debian's real openvpn 2.6 as the client.

The client's ccd file gives it a fixed address (`ifconfig-push`) and an extra pushed
route; the client must come up with that address, pings must cross the tunnel both ways,
and SIGINT must end the server with exit 0 and the server namespace as it was.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.pki import PKI, common_name
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


def _ping(netns: NetnsPair, side: str, target: str) -> None:
    ns = netns.client if side == "client" else netns.server
    r = ns.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", target], check=False, timeout=20)
    assert r.returncode == 0, f"ping {target} from {ns.name}: {r.stdout}{r.stderr}"


def test_openvpn_client_gets_its_ccd_fixed_address(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    for name, text in {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
                       "ta.key": pki.static_key}.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    ccd = tmp_path / "ccd"
    ccd.mkdir()
    (ccd / common_name(pki.client_cert)).write_text(
        'ifconfig-push 10.8.0.50 255.255.255.0\npush "route 10.99.0.0 255.255.0.0"\n'
    )
    conf = tmp_path / "server.conf"
    conf.write_text("\n".join([
        "port 1194", "proto udp", "dev tun", "topology subnet", "server 10.8.0.0 255.255.255.0",
        f"local {netns.server_v4}", "keepalive 10 60", "ca ca.crt", "cert server.crt", "key server.key",
        "dh none", "tls-crypt ta.key", "data-ciphers AES-256-GCM", "client-config-dir ccd", "ccd-exclusive",
    ]) + "\n")
    before = namespace_state(netns.server)
    serve = netns.server.popen(
        [sys.executable, "-m", "trivpn", "serve", str(conf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        read_until(serve, READY, UP_TIMEOUT)
        profile = tmp_path / "client.ovpn"
        profile.write_text(client_profile(pki, OPTS, netns.server_v4))
        log = tmp_path / "client.log"
        log.write_text("")
        client = netns.client.popen(
            ["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            text = wait_for_text(log, READY, UP_TIMEOUT)
            assert "net_addr_v4_add: 10.8.0.50/24" in text, text[-3000:]
            assert "route 10.99.0.0 255.255.0.0" in text, text[-3000:]
            read_until(serve, "ready:", UP_TIMEOUT)
            _ping(netns, "client", "10.8.0.1")
            _ping(netns, "server", "10.8.0.50")
            serve.send_signal(signal.SIGINT)
            rc = serve.wait(timeout=10)
            out = rest_of_output(serve)
            assert rc == 0, out
        finally:
            stop_process(client)
    finally:
        stop_process(serve)
    assert namespace_state(netns.server) == before, out
