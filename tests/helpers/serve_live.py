"""`python -m trivpn serve` and Debian's openvpn client in network namespaces (root tests).

Shared by tests/integration/test_serve*.py: start the server from a config file and wait
for it to be ready, start a real client from a profile and wait for its tunnel, ping,
stop the server with SIGINT (exit 0 expected). Every wait is bounded.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trivpn.testing.netns import Netns
from trivpn.testing.pki import PKI
from trivpn.testing.process import read_until, rest_of_output, stop_process, wait_for_text

UP_TIMEOUT = 30.0
READY = "Initialization Sequence Completed"
_ADDR = re.compile(r"net_addr_v4_add: (10\.\d+\.\d+\.\d+)/(\d+)")
_PTP = re.compile(r"net_addr_ptp_v4_add: (10\.\d+\.\d+\.\d+) peer (10\.\d+\.\d+\.\d+)")


def write_server_files(pki: PKI, workdir: Path) -> None:
    """ca.crt, server.crt, server.key and ta.key (mode 0600) for a server config in `workdir`."""
    files = {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
             "ta.key": pki.static_key}
    for name, text in files.items():
        (workdir / name).write_text(text)
        (workdir / name).chmod(0o600)


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
def openvpn_profile_client(ns: Netns, profile: str, workdir: Path, name: str) -> Iterator[Path]:
    """Debian's openvpn with `profile` (text) in `ns`; yields its log once the tunnel is up."""
    path = workdir / f"{name}.ovpn"
    path.write_text(profile)
    log = workdir / f"{name}.log"
    log.write_text("")
    proc = ns.popen(
        ["openvpn", "--config", str(path), "--log", str(log), "--verb", "4"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir,
    )
    try:
        wait_for_text(log, READY, UP_TIMEOUT)
        yield log
    finally:
        stop_process(proc)


def tunnel_address(log: Path) -> str:
    """The IPv4 address the client put on its TUN (subnet or net30 layout)."""
    text = log.read_text(errors="replace")
    found = _ADDR.search(text) or _PTP.search(text)
    assert found, text[-3000:]
    return found.group(1)


def ptp_pair(log: Path) -> tuple[str, str] | None:
    """(local, peer) when the client configured a point-to-point (net30) address."""
    found = _PTP.search(log.read_text(errors="replace"))
    return None if found is None else (found.group(1), found.group(2))


def ping(ns: Netns, target: str, count: int = 3) -> None:
    r = ns.run(["ping", "-c", str(count), "-i", "0.2", "-W", "3", target], check=False, timeout=20 + count)
    assert r.returncode == 0, f"ping {target} from {ns.name}: {r.stdout}{r.stderr}"


def stop_server(proc: subprocess.Popen[bytes]) -> str:
    """SIGINT; the server must exit 0 (bounded). Returns the rest of its output."""
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=10)
    out = rest_of_output(proc)
    assert rc == 0, out
    return out
