"""Ten real OpenVPN clients on one `trivpn serve` process that listens on UDP and TCP.

Each of ten namespaces runs Debian's openvpn 2.6 as a client, five over UDP and five over
TCP, to one server process with two `<listen>` blocks, one address pool, client-to-client,
a ccd fixed address, a ccd `iroute` network, crl-verify and a password script. The test
checks that every client gets a distinct address, that each one pings the next one around
the ring through the server (UDP to TCP and back), that the iroute network behind one
client is reachable from another, and that a revoked certificate and a wrong password are
refused while the server and the ten sessions stay up.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn.testing.netns import Netns, NetnsPair, second_client
from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.pki import PKI, common_name, revoke, with_client
from trivpn.testing.process import read_until, rest_of_output, stop_process, wait_for_text

pytestmark = pytest.mark.root

CLIENTS = 10
UP_TIMEOUT = 60.0
READY = "Initialization Sequence Completed"
PASSWORD = "M4trix-Passw0rd"
FIXED = "10.8.0.50"
IROUTE_NET = "192.168.77.0"
IROUTE_HOST = "192.168.77.1"
SCRIPT = f"""#!/bin/sh
{{ IFS= read -r u; IFS= read -r p; }} < "$1"
[ "$u" = alice ] && [ "$p" = {PASSWORD} ]
"""
ADDRESS = re.compile(r"net_addr_v4_add: (10\.8\.0\.\d+)/24")


def _opts(index: int) -> ServerOptions:
    proto = "udp" if index % 2 == 0 else "tcp"
    return ServerOptions(proto=proto, wrap="tls-crypt", data_ciphers="AES-256-GCM:CHACHA20-POLY1305", port=1194)


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _server_conf(pki: PKI, tmp: Path, cns: list[str], revoked: PKI) -> Path:
    for name, text in {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
                       "ta.key": pki.static_key, "crl.pem": revoke(pki, revoked.client_cert)}.items():
        _write(tmp / name, text)
    _write(tmp / "verify.sh", SCRIPT, 0o700)
    ccd = tmp / "ccd"
    ccd.mkdir()
    (ccd / cns[0]).write_text(f"ifconfig-push {FIXED} 255.255.255.0\n")
    (ccd / cns[1]).write_text(f"iroute {IROUTE_NET} 255.255.255.0\n")
    lines = [
        "<listen>", "proto udp", "port 1194", "</listen>",
        "<listen>", "proto tcp", "port 1194", "</listen>",
        "dev tun", "topology subnet", "server 10.8.0.0 255.255.255.0", "keepalive 10 60",
        "ca ca.crt", "cert server.crt", "key server.key", "dh none", "tls-crypt ta.key",
        "data-ciphers AES-256-GCM:CHACHA20-POLY1305", "client-to-client", "client-config-dir ccd",
        f"route {IROUTE_NET} 255.255.255.0", f'push "route {IROUTE_NET} 255.255.255.0"',
        "crl-verify crl.pem", "script-security 2", f"auth-user-pass-verify {tmp / 'verify.sh'} via-file",
    ]
    return _write(tmp / "server.conf", "\n".join(lines) + "\n")


def _start_client(ns: Netns, pki: PKI, index: int, remote: str, tmp: Path, name: str,
                  password: str = PASSWORD) -> tuple[subprocess.Popen[bytes], Path]:
    creds = _write(tmp / f"{name}.pass", f"alice\n{password}\n")
    profile = tmp / f"{name}.ovpn"
    profile.write_text(client_profile(pki, _opts(index), remote, extra=[f"auth-user-pass {creds}", "auth-retry none"]))
    log = tmp / f"{name}.log"
    log.write_text("")
    proc = ns.popen(["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, log


def _ping(ns: Netns, target: str) -> None:
    r = ns.run(["ping", "-c", "2", "-i", "0.2", "-W", "3", target], check=False, timeout=20)
    assert r.returncode == 0, f"ping {target} from {ns.name}: {r.stdout}{r.stderr}"


def test_ten_openvpn_clients_udp_and_tcp_on_one_server(netns: NetnsPair, pki: PKI, tmp_path: Path) -> None:
    cns = [f"matrix-{i}" for i in range(CLIENTS)]
    certs = [with_client(pki, cn) for cn in cns]
    assert [common_name(c.client_cert) for c in certs] == cns
    revoked = with_client(pki, "matrix-revoked")
    conf = _server_conf(pki, tmp_path, cns, revoked)
    with contextlib.ExitStack() as stack:
        spaces: list[tuple[Netns, str]] = [(netns.client, netns.server_v4)]
        for i in range(1, CLIENTS):
            ns = stack.enter_context(second_client(netns, f"10.201.{i}.1", f"10.201.{i}.2", index=i))
            spaces.append((ns, f"10.201.{i}.1"))
        spaces[1][0].run(["ip", "addr", "add", f"{IROUTE_HOST}/32", "dev", "lo"])
        serve = netns.server.popen([sys.executable, "-m", "trivpn", "serve", str(conf)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
        stack.callback(stop_process, serve)
        read_until(serve, READY, UP_TIMEOUT)
        logs: list[Path] = []
        for i, (ns, remote) in enumerate(spaces):
            proc, log = _start_client(ns, certs[i], i, remote, tmp_path, cns[i])
            stack.callback(stop_process, proc)
            logs.append(log)
        addresses = []
        for log in logs:
            text = wait_for_text(log, READY, UP_TIMEOUT)
            found = ADDRESS.findall(text)
            assert found, text[-2000:]
            addresses.append(found[-1])
        assert len(set(addresses)) == CLIENTS, addresses
        assert addresses[0] == FIXED
        # Around the ring: even indices are UDP clients, odd ones TCP clients.
        for i, (ns, _) in enumerate(spaces):
            _ping(ns, "10.8.0.1")
            _ping(ns, addresses[(i + 1) % CLIENTS])
        _ping(spaces[2][0], IROUTE_HOST)
        _ping(netns.server, IROUTE_HOST)

        bad, bad_log = _start_client(spaces[2][0], certs[2], 2, spaces[2][1], tmp_path, "wrongpass", "not-it")
        stack.callback(stop_process, bad)
        bad.wait(timeout=UP_TIMEOUT)  # auth-retry none: AUTH_FAILED ends it by itself
        text = bad_log.read_text(errors="replace")
        assert "AUTH_FAILED" in text and READY not in text, text[-2000:]
        rogue, rogue_log = _start_client(spaces[3][0], revoked, 3, spaces[3][1], tmp_path, "revoked")
        stack.callback(stop_process, rogue)
        text = wait_for_text(rogue_log, "certificate revoked", UP_TIMEOUT)
        assert READY not in text
        stop_process(rogue)

        assert serve.poll() is None, "the server must stay up"
        for i, (ns, _) in enumerate(spaces):
            _ping(ns, addresses[(i + 3) % CLIENTS])
        serve.send_signal(signal.SIGINT)
        rc = serve.wait(timeout=15)
        out = rest_of_output(serve)
        assert rc == 0, out[-3000:]
        assert PASSWORD not in out
