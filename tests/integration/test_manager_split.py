"""`trivpn manage` against Debian's real openvpn: the split-privilege path end to end.

The manager (root, in the client namespace) creates the TUN and starts `trivpn tunnel`,
which drops to `nobody`; the tunnel connects to the real server, asks the manager to apply
the pushed settings over the control protocol, and a ping crosses the tunnel. The tunnel
process must hold no root privileges (uid, and no effective or permitted capabilities),
and SIGINT must leave the namespace as it was.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.process import read_until

pytestmark = pytest.mark.root


def _state(ns) -> str:  # type: ignore[no-untyped-def]
    links = ns.run(["ip", "-o", "link"]).stdout
    names = sorted(ln.split(":")[1].strip() for ln in links.splitlines() if ":" in ln)
    out = [" ".join(names)]
    for argv in (["ip", "-o", "addr"], ["ip", "route"], ["ip", "-6", "route"]):
        out.extend(ln for ln in ns.run(argv).stdout.splitlines() if "fe80::" not in ln)
    return "\n".join(out)


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def test_manage_brings_up_tunnel_with_unprivileged_tunnel_process(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt", extra=['push "route 10.203.0.0 255.255.255.0"'])
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host))
    before = _state(netns.client)
    proc = netns.client.popen(
        [sys.executable, "-m", "trivpn", "manage", str(profile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        lines = read_until(proc, "managed tunnel up", 40)
        text = "\n".join(lines)
        m = re.search(r"managed tunnel up .*\(tunnel process (\d+)\)", text)
        assert m, text
        pid = int(m.group(1))
        # Relayed over the protocol: the engine's own lines arrive as Log messages.
        assert "TLS ok" in text and "tunnel up" in text, text
        assert "network settings applied" in text, text

        status = _status(pid)
        uids = status["Uid"].split()
        assert uids and all(u != "0" for u in uids), status["Uid"]
        assert all(g != "0" for g in status["Gid"].split()), status["Gid"]
        assert int(status["CapEff"], 16) == 0, status["CapEff"]
        assert int(status["CapPrm"], 16) == 0, status["CapPrm"]

        routes = netns.client.run(["ip", "route"]).stdout
        assert any(ln.startswith("10.203.0.0/24 ") for ln in routes.splitlines()), routes
        for target in (server.tunnel_v4, server.tunnel_v6):
            r = netns.client.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", target], check=False)
            assert r.returncode == 0, f"ping {target} failed:\n{r.stdout}{r.stderr}"

        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=15)
        assert proc.stdout is not None
        import os

        os.set_blocking(proc.stdout.fileno(), True)
        rest = proc.stdout.read().decode(errors="replace")
        assert rc == 0, f"exit {rc}:\n{rest}"
        assert "Traceback" not in text + rest
        assert "disconnected (SIGINT)" in rest, rest
        # Stop went over the protocol: the engine's closing line was relayed before it ended.
        assert "counters: data in" in rest, rest
        # The tunnel process is gone and nothing it asked for is left behind.
        assert not Path(f"/proc/{pid}").exists() or _status(pid).get("State", "").startswith("Z")
        assert _state(netns.client) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_manage_without_root_is_one_line(pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, "127.0.0.1"))
    r = subprocess.run(
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--",
         sys.executable, "-m", "trivpn", "manage", str(profile)],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "root" in errors[0], r.stderr


def test_tunnel_command_rejects_a_bad_manager_header(tmp_path: Path) -> None:
    """`trivpn tunnel` on two pipes: a wrong header ends it with one line, exit 1."""
    import os

    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trivpn", "tunnel", "--rpc-read-fd", str(to_r), "--rpc-write-fd", str(from_w)],
            pass_fds=(to_r, from_w), stderr=subprocess.PIPE, text=True,
        )
        os.close(to_r)
        os.close(from_w)
        os.write(to_w, b"codervpn manager 1.0\n")
        with os.fdopen(from_r, "rb") as f:
            assert f.readline() == b"trivpn tunnel 1.0\n"
        from_r = -1
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "preamble" in lines[0], err
    finally:
        for fd in (to_w, from_r):
            if fd >= 0:
                os.close(fd)
