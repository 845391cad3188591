"""`user nobody` / `group nogroup` in `trivpn serve`, Debian's real openvpn 2.6 as client.

Once the server is up, /proc/PID/status must show the new uid and gid everywhere (real,
effective, saved, filesystem), only that one supplementary group, and CAP_NET_ADMIN as the
only capability left. The status file and the ifconfig-pool-persist file live in a
directory only root may write to, and must still be rewritten after the drop; the
client-connect script must run (as nobody) and admit the client; pings must cross; SIGINT
must end the server with exit 0 and remove its addresses and routes (what the kept
CAP_NET_ADMIN is for), leaving the namespace as it was.
"""

from __future__ import annotations

import pwd
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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
    wait_until,
)

pytestmark = pytest.mark.root

UP_TIMEOUT = 30.0
READY = "Initialization Sequence Completed"
OPTS = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", port=1194)
CAP_NET_ADMIN = 1 << 12


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory nobody can reach (pytest's own tmp dirs are root's only): the script."""
    with tempfile.TemporaryDirectory(prefix="trivpn-privdrop-") as name:
        path = Path(name)
        path.chmod(0o755)
        yield path


def test_serve_drops_to_nobody_and_keeps_working(netns: NetnsPair, pki: PKI, tmp_path: Path, shared: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    for name, text in {"ca.crt": pki.ca_cert, "server.crt": pki.server_cert, "server.key": pki.server_key,
                       "ta.key": pki.static_key}.items():
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o600)
    tmp_path.chmod(0o700)  # root's only: the status and persist files must be written via kept fds
    out_dir = shared / "out"
    out_dir.mkdir()
    out_dir.chmod(0o777)
    script = shared / "connect.sh"
    script.write_text(f"#!/bin/sh\nid -u > {out_dir}/$script_type.uid\nexit 0\n")
    script.chmod(0o755)
    status, persist = tmp_path / "status.log", tmp_path / "ipp.txt"
    conf = tmp_path / "server.conf"
    conf.write_text("\n".join([
        "port 1194", "proto udp", "dev tun", "topology subnet", "server 10.8.0.0 255.255.255.0",
        f"local {netns.server_v4}", "keepalive 10 60", "ca ca.crt", "cert server.crt", "key server.key",
        "dh none", "tls-crypt ta.key", "data-ciphers AES-256-GCM", "user nobody", "group nogroup",
        f"status {status} 1", "status-version 2", f"ifconfig-pool-persist {persist} 1",
        "script-security 2", f"client-connect {script}", f"client-disconnect {script}",
    ]) + "\n")
    before = namespace_state(netns.server)
    serve = netns.server.popen(
        [sys.executable, "-m", "trivpn", "serve", str(conf)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        read_until(serve, READY, UP_TIMEOUT)
        assert b"trivpn" in Path(f"/proc/{serve.pid}/cmdline").read_bytes()
        st = _proc_status(serve.pid)
        assert st["Uid"].split() == [str(nobody.pw_uid)] * 4, st["Uid"]
        assert st["Gid"].split() == [str(nobody.pw_gid)] * 4, st["Gid"]
        assert st["Groups"].split() == [str(nobody.pw_gid)], st["Groups"]
        assert int(st["CapEff"], 16) == CAP_NET_ADMIN and int(st["CapPrm"], 16) == CAP_NET_ADMIN, st
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0, st
        profile = tmp_path / "client.ovpn"
        profile.write_text(client_profile(pki, OPTS, netns.server_v4, extra=["explicit-exit-notify 1"]))
        log = tmp_path / "client.log"
        log.write_text("")
        client = netns.client.popen(
            ["openvpn", "--config", str(profile), "--log", str(log), "--verb", "4"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        cn = common_name(pki.client_cert)
        try:
            wait_for_text(log, READY, UP_TIMEOUT)
            r = netns.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "3", "10.8.0.1"], check=False, timeout=20)
            assert r.returncode == 0, r.stdout + r.stderr
            assert (out_dir / "client-connect.uid").read_text().strip() == str(nobody.pw_uid)
            wait_until(lambda: f"CLIENT_LIST,{cn}," in status.read_text(), UP_TIMEOUT, "the client in the status file")
            wait_until(lambda: persist.read_text().startswith(f"{cn},10.8.0.2"), UP_TIMEOUT, "the lease persisted")
        finally:
            stop_process(client)
        wait_until(lambda: (out_dir / "client-disconnect.uid").exists(), UP_TIMEOUT, "client-disconnect")
        serve.send_signal(signal.SIGINT)
        rc = serve.wait(timeout=15)
        out = rest_of_output(serve)
        assert rc == 0, out
    finally:
        stop_process(serve)
    assert namespace_state(netns.server) == before, out
    assert status.stat().st_uid == 0 and status.stat().st_mode & 0o777 == 0o600
