"""`trivpn serve` in a network namespace with Debian's openvpn as its client: the pieces
the serve integration tests share (a server.conf, the running server, a client, pings)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trivpn.testing.netns import Netns
from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.pki import PKI
from trivpn.testing.process import read_until, rest_of_output, stop_process, wait_for_text

PORT = 1194
SERVER_TUNNEL = "10.8.0.1"
UP_TIMEOUT = 30.0
READY = "Initialization Sequence Completed"
#: What openvpn 2.6 logs when the server said RESTART (cc-exit) or sent OCC exit.
GOODBYE_MARKS = ("server-pushed-connection-reset", "exit-with-notification")
_ADDR = re.compile(r"net_addr_v4_add: (10\.8\.0\.\d+)/24")
_PTP = re.compile(r"net_addr_ptp_v4_add: (10\.\d+\.\d+\.\d+) peer (10\.\d+\.\d+\.\d+)")


UDP_TLSCRYPT = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=PORT)
TCP_TLSAUTH = ServerOptions(proto="tcp", wrap="tls-auth", data_ciphers="CHACHA20-POLY1305", port=PORT)


def write_server_files(pki: PKI, workdir: Path) -> None:
    """ca.crt, server.crt, server.key and ta.key (mode 0600) for a server.conf in `workdir`."""
    files = {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
             "ta.key": pki.static_key}
    for name, text in files.items():
        (workdir / name).write_text(text)
        (workdir / name).chmod(0o600)


def server_conf(pki: PKI, workdir: Path, extra: list[str], opts: ServerOptions = UDP_TLSCRYPT) -> Path:
    write_server_files(pki, workdir)
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
    ns: Netns, pki: PKI, remote: str, workdir: Path, name: str, opts: ServerOptions = UDP_TLSCRYPT,
    extra: tuple[str, ...] = (),
) -> Iterator[Path]:
    """Debian's openvpn as a client in `ns` (profile lines `extra` added); yields its log
    once the tunnel is up."""
    profile = workdir / f"{name}.ovpn"
    profile.write_text(client_profile(pki, opts, remote, extra=extra))
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


def ptp_pair(log: Path) -> tuple[str, str] | None:
    """(local, peer) when the client configured a point-to-point (net30) address."""
    found = _PTP.search(log.read_text(errors="replace"))
    return None if found is None else (found.group(1), found.group(2))


def ping(ns: Netns, target: str, count: int = 3) -> None:
    r = ns.run(["ping", "-c", str(count), "-i", "0.2", "-W", "3", target], check=False, timeout=17 + count)
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
