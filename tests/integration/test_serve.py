"""`trivpn serve` with Debian's real openvpn 2.6 as the client, across network namespaces.

`python -m trivpn serve server.conf` runs in the server namespace (UDP, tls-crypt,
AES-256-GCM, topology subnet, keepalive), `openvpn --client` in the client namespace. The
client's tunnel must come up, pings must cross it both ways, and SIGINT must end the server
with exit 0, the client told the server is going away, and the server namespace's links,
addresses and routes as they were before.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.pki import PKI
from trivpn.testing.process import namespace_state, read_until, rest_of_output, wait_for_text

pytestmark = pytest.mark.root

PORT = 1194
SERVER_TUNNEL = "10.8.0.1"
FIRST_CLIENT = "10.8.0.2"
UP_TIMEOUT = 30.0
#: What openvpn 2.6 logs when the server said RESTART (cc-exit) or sent OCC exit.
GOODBYE_MARKS = ("server-pushed-connection-reset", "exit-with-notification")


def server_conf(pki: PKI, workdir: Path, local: str) -> Path:
    files = {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
             "ta.key": pki.static_key}
    for name, text in files.items():
        (workdir / name).write_text(text)
        (workdir / name).chmod(0o600)
    conf = workdir / "server.conf"
    conf.write_text(
        "\n".join(
            [
                "port 1194", "proto udp", f"local {local}", "dev tun", "topology subnet",
                "server 10.8.0.0 255.255.255.0", "keepalive 10 60", "ca ca.crt", "cert server.crt",
                "key server.key", "dh none", "tls-crypt ta.key", "data-ciphers AES-256-GCM",
                "persist-key", "persist-tun", "verb 3",
            ]
        )
        + "\n"
    )
    return conf


@pytest.fixture
def serve(netns: NetnsPair, pki: PKI, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    conf = server_conf(pki, tmp_path, netns.server_v4)
    proc = netns.server.popen(
        [sys.executable, "-m", "trivpn", "serve", str(conf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_openvpn_client_through_trivpn_serve(
    netns: NetnsPair, pki: PKI, tmp_path: Path, serve: subprocess.Popen[bytes]
) -> None:
    before = namespace_state(netns.server)
    # wait for the server
    lines = read_until(serve, "Initialization Sequence Completed", UP_TIMEOUT)
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=PORT)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, netns.server_v4))
    log = tmp_path / "client.log"
    log.write_text("")
    client = netns.client.popen(
        ["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_text(log, "Initialization Sequence Completed", UP_TIMEOUT)
        text = log.read_text(errors="replace")
        assert f"{FIRST_CLIENT}/24" in text or f"ifconfig {FIRST_CLIENT} 255.255.255.0" in text, text[-3000:]
        lines += read_until(serve, "ready:", UP_TIMEOUT)
        for ns, target in ((netns.client, SERVER_TUNNEL), (netns.server, FIRST_CLIENT)):
            r = ns.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", target], check=False, timeout=20)
            assert r.returncode == 0, f"ping {target} from {ns.name}: {r.stdout}{r.stderr}"
        serve.send_signal(signal.SIGINT)
        rc = serve.wait(timeout=10)
        out = "\n".join(lines) + rest_of_output(serve)
        assert rc == 0, out
        text = wait_for_text(log, "SIGUSR1", UP_TIMEOUT)
        assert any(mark in text for mark in GOODBYE_MARKS), text[-3000:]
        assert namespace_state(netns.server) == before, out
    finally:
        client.terminate()
        try:
            client.wait(timeout=10)
        except subprocess.TimeoutExpired:
            client.kill()
            client.wait(timeout=10)
