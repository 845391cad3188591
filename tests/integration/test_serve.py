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
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from trivpn.testing.netns import Netns, NetnsPair, second_client
from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.pki import PKI, common_name
from trivpn.testing.process import (
    namespace_state,
    read_until,
    rest_of_output,
    stop_process,
    wait_for_text,
    wait_until,
)

pytestmark = pytest.mark.root

PORT = 1194
SERVER_TUNNEL = "10.8.0.1"
UP_TIMEOUT = 30.0
READY = "Initialization Sequence Completed"
#: What openvpn 2.6 logs when the server said RESTART (cc-exit) or sent OCC exit.
GOODBYE_MARKS = ("server-pushed-connection-reset", "exit-with-notification")
_ADDR = re.compile(r"net_addr_v4_add: (10\.8\.0\.\d+)/24")


UDP_TLSCRYPT = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=PORT)
TCP_TLSAUTH = ServerOptions(proto="tcp", wrap="tls-auth", data_ciphers="CHACHA20-POLY1305", port=PORT)


def server_conf(pki: PKI, workdir: Path, extra: list[str], opts: ServerOptions = UDP_TLSCRYPT) -> Path:
    files = {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
             "ta.key": pki.static_key}
    for name, text in files.items():
        (workdir / name).write_text(text)
        (workdir / name).chmod(0o600)
    conf = workdir / "server.conf"
    lines = [
        f"port {opts.port}", "proto " + ("tcp-server" if opts.is_tcp else "udp"), "dev tun",
        "topology subnet", "server 10.8.0.0 255.255.255.0", "keepalive 10 60", "ca ca.crt",
        "cert server.crt", "key server.key", "dh none",
        "tls-crypt ta.key" if opts.wrap == "tls-crypt" else "tls-auth ta.key 0",
        f"data-ciphers {opts.data_ciphers}", "persist-key", "persist-tun", "verb 3",
        *extra,
    ]
    conf.write_text("\n".join(lines) + "\n")
    return conf


@contextmanager
def trivpn_serve(ns: Netns, conf: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m trivpn serve conf` in `ns`, started and initialised (bounded wait)."""
    proc = ns.popen(
        [sys.executable, "-m", "trivpn", "serve", str(conf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=conf.parent,
    )
    try:
        read_until(proc, READY, UP_TIMEOUT)
        yield proc
    finally:
        stop_process(proc)


@contextmanager
def openvpn_client(
    ns: Netns, pki: PKI, remote: str, workdir: Path, name: str, opts: ServerOptions = UDP_TLSCRYPT
) -> Iterator[Path]:
    """Debian's openvpn as a client in `ns`; yields its log once the tunnel is up."""
    profile = workdir / f"{name}.ovpn"
    profile.write_text(client_profile(pki, opts, remote))
    log = workdir / f"{name}.log"
    log.write_text("")
    proc = ns.popen(
        ["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_text(log, READY, UP_TIMEOUT)
        yield log
    finally:
        stop_process(proc)


def tunnel_address(log: Path) -> str:
    found = _ADDR.search(log.read_text(errors="replace"))
    assert found, log.read_text(errors="replace")[-3000:]
    return found.group(1)


def ping(ns: Netns, target: str) -> None:
    r = ns.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", target], check=False, timeout=20)
    assert r.returncode == 0, f"ping {target} from {ns.name}: {r.stdout}{r.stderr}"


def status_row(path: Path) -> list[str] | None:
    """The one CLIENT_LIST row of a version-2 status file once both byte counts are > 0."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    rows = [line.split(",") for line in text.splitlines() if line.startswith("CLIENT_LIST,")]
    return rows[0] if len(rows) == 1 and int(rows[0][5]) > 0 and int(rows[0][6]) > 0 else None


def stop_server(proc: subprocess.Popen[bytes]) -> str:
    """SIGINT; the server must exit 0 (bounded). Returns the rest of its output."""
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=10)
    out = rest_of_output(proc)
    assert rc == 0, out
    return out


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
