"""`user`/`group`: `trivpn connect` runs as the user with only CAP_NET_ADMIN from before the
first TLS handshake on.

Proven on the running process: /proc/PID/status shows the user's uid/gid in every slot and
CapEff/CapPrm equal to CAP_NET_ADMIN alone; the log shows the drop before `TLS ok`; the
tunnel still carries pings, survives a restart of Debian's openvpn server (routes go
through the privileged helper), the first `up`/`route-up` run as root (as OpenVPN's,
which come before its drop) and the `route-up` of the reconnect as the user, and SIGINT
leaves the namespace exactly as it was (the helper undid routes and addresses as root).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trivpn.session.killswitch import TABLE
from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import OpenVPNServer, ServerOptions, client_profile
from trivpn.testing.pki import PKI
from trivpn.testing.process import namespace_state, wait_for_text, wait_until

pytestmark = pytest.mark.root

NOBODY = 65534
CAP_NET_ADMIN_MASK = 1 << 12


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the dropped user can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="trivpn-privdrop-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def _ping(netns: NetnsPair, target: str) -> bool:
    return netns.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "1", target], check=False).returncode == 0


@pytest.mark.parametrize("kill_switch", [False, True], ids=["plain", "kill-switch"])
def test_user_group_drop_to_cap_net_admin_and_survive_a_server_restart(
    kill_switch: bool, pki: PKI, netns: NetnsPair, openvpn_server: Callable[[ServerOptions], OpenVPNServer],
    tmp_path: Path, shared_dir: Path,
) -> None:
    """With `--kill-switch` too: its nftables calls after the drop go through the helper."""
    opts = ServerOptions(proto="udp", wrap="tls-crypt", keepalive=(1, 4))
    server = openvpn_server(opts)
    out = shared_dir / "out"
    out.mkdir()
    out.chmod(0o777)
    script = shared_dir / "whoami.sh"
    script.write_text(f'#!/bin/sh\ntouch "{out}/$script_type.$(id -u)"\n')
    script.chmod(0o755)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, extra=[
        "user nobody", "group nogroup", "persist-tun", "persist-key",
        "script-security 2", f"up {script}", f"route-up {script}",
    ]))
    before = namespace_state(netns.client)
    log = tmp_path / "client.log"
    flags = ["--kill-switch"] if kill_switch else []
    proc = netns.client.popen([sys.executable, "-m", "trivpn", "connect", str(profile), "--no-dns", *flags],
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_text(log, "tunnel up", 30)
        text = log.read_text()
        if kill_switch:
            assert "kill switch on" in text
            assert netns.client.run(["nft", "list", "table", "inet", TABLE], check=False).returncode == 0
        assert text.index("dropped privileges") < text.index("TLS ok")  # before any network input
        st = _status(proc.pid)
        assert st["Uid"].split() == [str(NOBODY)] * 4, st["Uid"]
        assert st["Gid"].split() == [str(NOBODY)] * 4, st["Gid"]
        assert st["Groups"].split() == [str(NOBODY)], st["Groups"]
        assert int(st["CapEff"], 16) == CAP_NET_ADMIN_MASK, st["CapEff"]
        assert int(st["CapPrm"], 16) == CAP_NET_ADMIN_MASK, st["CapPrm"]
        assert int(st["CapInh"], 16) == 0 and int(st.get("CapAmb", "0"), 16) == 0
        assert _ping(netns, server.tunnel_v4)

        server.stop()
        wait_for_text(log, "reconnecting in", 20)
        server.start()
        text = wait_for_text(log, "tunnel up", 40, count=2)
        assert "Traceback" not in text, text
        assert _ping(netns, server.tunnel_v4)
        assert int(_status(proc.pid)["CapEff"], 16) == CAP_NET_ADMIN_MASK  # still the user
        try:
            wait_until((out / f"route-up.{NOBODY}").exists, 10, "route-up after the reconnect, as the user")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text()[-3000:]}") from None
        # before the drop (first up and route-up) as root, as OpenVPN; after it as the user
        assert sorted(p.name for p in out.iterdir()) == ["route-up.0", f"route-up.{NOBODY}", "up.0"]

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_until(lambda: namespace_state(netns.client) == before, 10, "routes and TUN gone after exit")
    assert "Traceback" not in log.read_text()
    if kill_switch:
        assert "kill switch off" in log.read_text()
        assert netns.client.run(["nft", "list", "table", "inet", TABLE], check=False).returncode != 0


def test_helper_restores_the_host_when_the_engine_is_killed(
    pki: PKI, netns: NetnsPair, openvpn_server: Callable[[ServerOptions], OpenVPNServer], tmp_path: Path,
) -> None:
    """SIGKILL of the unprivileged engine: the root helper sees its socket close and removes
    the routes itself, including the server's host route that closing the TUN would leave."""
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, extra=[
        "user nobody", "group nogroup", "redirect-gateway def1"]))
    before = namespace_state(netns.client)
    log = tmp_path / "client.log"
    proc = netns.client.popen([sys.executable, "-m", "trivpn", "connect", str(profile), "--no-dns"],
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_text(log, "tunnel up", 30)
        assert namespace_state(netns.client) != before
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_until(lambda: namespace_state(netns.client) == before, 10, "the helper's cleanup after SIGKILL")
