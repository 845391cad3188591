"""The client never fails open, against Debian's real openvpn 2.6 in network namespaces.

* a rogue server (real openvpn, certificate from another CA) where the real one was: the
  client keeps retrying and the default route keeps pointing into the TUN;
* `00 00` injected into the TCP stream after the tunnel was up: a restart, the tunnel comes
  back on the same TUN, the routes stay throughout;
* `--kill-switch`: with the server gone, traffic generated in the client namespace leaves
  the physical interface (veth0, counted by an nft egress hook) only towards the server's
  address, port and protocol; the table goes at exit, and a SIGKILLed run's table is found
  and replaced (kill switch) or removed (no kill switch) at the next start.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.require import in_ci

from trivpn.session.killswitch import TABLE
from trivpn.testing.netns import Netns
from trivpn.testing.ovpn_server import OpenVPNServer, ServerOptions, client_profile
from trivpn.testing.pki import generate_pki
from trivpn.testing.process import (
    namespace_state,
    read_until,
    rest_of_output,
    stop_process,
    wait_until,
)

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _needs_nft() -> None:
    """The kill switch and the egress counters need nftables: fail under CI=true, else skip."""
    if shutil.which("nft") is None:
        reason = "`nft` not found (apt install nftables)"
        if in_ci():
            pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
        pytest.skip(f"NOT RUN: {reason}")

#: Somewhere outside the tunnel and the test link: traffic to it must never leave with the
#: kill switch on (the client namespace gets a default route through the server's side).
OUTSIDE_V4 = "203.0.113.5"
REDIRECT = ['push "redirect-gateway def1"']


def _start_client(ns: Netns, profile: Path, *args: str) -> subprocess.Popen[bytes]:
    return ns.popen(
        [sys.executable, "-m", "trivpn", "connect", str(profile), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _tun_of(lines: list[str]) -> str:
    up = [ln for ln in lines if "tunnel up on " in ln]
    assert up, lines
    return up[-1].split("tunnel up on ", 1)[1].split(":", 1)[0]


def _route_dev(ns: Netns, dst: str) -> str:
    out = ns.run(["ip", "route", "get", dst]).stdout
    m = re.search(r" dev (\S+)", out)
    assert m, out
    return m.group(1)


def _wait_lines(proc: subprocess.Popen[bytes], needle: str, count: int, timeout: float) -> list[str]:
    """Read output until `needle` appeared `count` times (each wait bounded)."""
    lines: list[str] = []
    for _ in range(count * 4):
        if sum(needle in ln for ln in lines) >= count:
            return lines
        lines += read_until(proc, needle, timeout)
    raise AssertionError(f"{needle!r} fewer than {count} times:\n" + "\n".join(lines))


def _sigint(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=10)
    rest = rest_of_output(proc)
    assert rc == 0, f"exit code {rc}:\n{rest}"
    assert "Traceback" not in rest
    return rest


def test_rogue_server_keeps_the_client_retrying_inside_its_routes(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt", extra=REDIRECT)
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host) + "connect-retry 1 2\n")
    before = namespace_state(netns.client)
    proc = _start_client(netns.client, profile)
    rogue: OpenVPNServer | None = None
    try:
        tun = _tun_of(read_until(proc, "tunnel up", 30))
        assert _route_dev(netns.client, OUTSIDE_V4) == tun
        # the real server goes (explicit-exit-notify: the client restarts at once) and a
        # rogue takes its place: same address, port and tls-crypt key, another CA
        server.stop()
        rogue_pki = dataclasses.replace(generate_pki(server_cn="trivpn-test-server"), static_key=pki.static_key)
        rogue = OpenVPNServer(netns.server, rogue_pki, opts, tmp_path / "rogue", listen_v4=netns.server_v4)
        rogue.start()
        lines = _wait_lines(proc, "server certificate verification failed", 3, 30)
        refusals = [ln for ln in lines if "server certificate verification failed" in ln]
        assert all("reconnecting in" in ln for ln in refusals), refusals
        assert proc.poll() is None, "the client gave up"
        # the whole time: the TUN, its addresses and the redirect routes stay (persist-tun)
        assert _route_dev(netns.client, OUTSIDE_V4) == tun
        assert _route_dev(netns.client, netns.server_v4) == "veth0"  # the bypass route
        _sigint(proc)
        assert namespace_state(netns.client) == before
    finally:
        stop_process(proc)
        if rogue is not None:
            rogue.stop()


#: A TCP forwarder that, on SIGUSR1, writes `00 00` to the client between two frames.
FORWARDER = r"""
import select, signal, socket, sys, time
lhost, lport, uhost, uport, life = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
inject = [False]
signal.signal(signal.SIGUSR1, lambda *_: inject.__setitem__(0, True))
ls = socket.create_server((lhost, lport))
peer, down = {}, {}  # socket -> other end; client socket -> server bytes of the frame in progress
def garbage(c):
    c.sendall(b"\x00\x00"); inject[0] = False; print("injected", flush=True)
print("listening", flush=True)
end = time.monotonic() + life
while time.monotonic() < end:
    ready, _, _ = select.select([ls, *peer], [], [], 0.1)
    for s in ready:
        if s is ls:
            c, _ = ls.accept()
            u = socket.create_connection((uhost, uport), timeout=5)
            peer[c], peer[u], down[c] = u, c, bytearray()
            continue
        if s not in peer:
            continue
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        other = peer[s]
        if not data:
            for x in (s, other):
                peer.pop(x, None); down.pop(x, None); x.close()
            continue
        if s in down:
            other.sendall(data)
            continue
        buf = down[other]
        buf += data
        while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
            n = 2 + int.from_bytes(buf[:2], "big")
            other.sendall(bytes(buf[:n])); del buf[:n]
            if inject[0]:
                garbage(other)
    if inject[0]:
        for c, buf in list(down.items()):
            if not buf:
                garbage(c)
                break
"""


def test_tcp_garbage_after_the_tunnel_is_a_restart_with_routes_kept(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="tcp", wrap="tls-crypt", extra=REDIRECT)
    server = openvpn_server(opts)
    relay_port = opts.port + 1
    fwd = netns.server.popen(
        [sys.executable, "-c", FORWARDER, netns.server_v4, str(relay_port), netns.server_v4, str(opts.port), "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    proc: subprocess.Popen[bytes] | None = None
    try:
        read_until(fwd, "listening", 10)
        profile = tmp_path / "client.ovpn"
        profile.write_text(client_profile(pki, dataclasses.replace(opts, port=relay_port), server.remote_host))
        before = namespace_state(netns.client)
        proc = _start_client(netns.client, profile)
        tun = _tun_of(read_until(proc, "tunnel up", 30))
        routes_up = netns.client.run(["ip", "-4", "route"]).stdout
        fwd.send_signal(signal.SIGUSR1)
        read_until(fwd, "injected", 10)
        lines = read_until(proc, "is corrupt", 20)
        corrupt = next(ln for ln in lines if "is corrupt" in ln)
        assert "invalid TCP frame length 0" in corrupt and "reconnecting in" in corrupt, corrupt
        # while it reconnects: the same routes, the default still into the TUN
        assert netns.client.run(["ip", "-4", "route"]).stdout == routes_up
        assert _route_dev(netns.client, OUTSIDE_V4) == tun
        assert proc.poll() is None
        lines = read_until(proc, "tunnel up", 30)
        assert _tun_of(lines) == tun  # the same TUN: nothing was torn down
        r = netns.client.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", server.tunnel_v4], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        _sigint(proc)
        assert namespace_state(netns.client) == before
    finally:
        if proc is not None:
            stop_process(proc)
        stop_process(fwd)


LEAK_TABLE = "trivpn_leaktest"


def _count_egress(ns: Netns) -> None:
    """Count what leaves veth0 (a netdev egress hook sees every frame the device sends)."""
    script = (
        f"table netdev {LEAK_TABLE} {{\n"
        "  chain egress {\n"
        '    type filter hook egress device "veth0" priority 0;\n'
        '    ip daddr 10.201.0.1 udp dport 1194 counter accept comment "server"\n'
        '    meta protocol arp counter accept comment "arp"\n'
        "    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } "
        'counter accept comment "link"\n'
        '    counter comment "leak"\n'
        "  }\n"
        "}\n"
    )
    ns.run(["nft", "-f", "-"], input=script)


def _counters(ns: Netns) -> dict[str, int]:
    text = ns.run(["nft", "list", "table", "netdev", LEAK_TABLE]).stdout
    return {m.group(2): int(m.group(1)) for m in re.finditer(r'counter packets (\d+) bytes \d+ (?:accept )?comment "(\w+)"', text)}


def _killswitch_table(ns: Netns) -> str | None:
    r = ns.run(["nft", "list", "table", "inet", TABLE], check=False)
    return r.stdout if r.returncode == 0 else None


def _try_leaks(ns: Netns) -> None:
    """Traffic that must not leave: ICMP to an outside address and to the server's address,
    UDP to the server's address on another port, IPv6 to the server's link address."""
    for argv in (
        ["ping", "-c", "2", "-i", "0.2", "-W", "1", OUTSIDE_V4],
        ["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.201.0.1"],
        ["ping", "-c", "2", "-i", "0.2", "-W", "1", "fd00:201::1"],
        [sys.executable, "-c", "import socket; s=socket.socket(2,2); s.sendto(b'x', ('10.201.0.1', 53))"],
    ):
        ns.run(argv, check=False, timeout=20)


def test_kill_switch_lets_nothing_out_but_the_server(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    server = openvpn_server(opts)
    # without the kill switch, anything not for the tunnel would leave through veth0
    netns.client.run(["ip", "route", "add", "default", "via", netns.server_v4])
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host) + "connect-retry 1 2\n")
    proc = _start_client(netns.client, profile, "--kill-switch")
    try:
        read_until(proc, "tunnel up", 30)
        table = _killswitch_table(netns.client)
        assert table is not None and "policy drop" in table
        # counting starts with the kill switch in place (before it, the kernel's own IPv6
        # link chatter from bringing veth0 up may still be leaving)
        _count_egress(netns.client)
        server.stop()  # the server is gone; the client keeps running and reconnecting
        _try_leaks(netns.client)
        assert proc.poll() is None, "the client gave up"
        counts = _counters(netns.client)
        assert counts["leak"] == 0, counts
        assert counts["server"] > 0, counts  # the client's own packets to the server did leave
        _sigint(proc)
        assert _killswitch_table(netns.client) is None
        # the control: with the client gone the same traffic does leave (the counter works)
        _try_leaks(netns.client)
        assert _counters(netns.client)["leak"] > 0
    finally:
        stop_process(proc)


def test_a_crashed_runs_table_is_replaced_then_removed(pki, netns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    profile = tmp_path / "client.ovpn"  # no server at all: the client only keeps trying
    profile.write_text(client_profile(pki, opts, netns.server_v4) + "connect-retry 1 2\nsetenv opt trivpn-kill-switch\n")
    first = _start_client(netns.client, profile)
    try:
        read_until(first, "kill switch on", 20)
        first.kill()  # SIGKILL: no cleanup runs
        first.wait(timeout=10)
        stale = _killswitch_table(netns.client)
        assert stale is not None and f"pid {first.pid}" in stale
        r = netns.client.run(["ping", "-c", "1", "-W", "1", netns.server_v4], check=False)
        assert r.returncode != 0  # still closed after the crash: nothing leaks
        # the next run with the kill switch replaces it ...
        second = _start_client(netns.client, profile)
        try:
            lines = read_until(second, "kill switch on", 20)
            assert any("replacing the kill switch table" in ln for ln in lines), lines
            table = _killswitch_table(netns.client)
            assert table is not None and f"pid {second.pid}" in table
            second.kill()
            second.wait(timeout=10)
        finally:
            stop_process(second)
        # ... and a run without it removes it
        plain = tmp_path / "plain.ovpn"
        plain.write_text(profile.read_text().replace("setenv opt trivpn-kill-switch\n", ""))
        third = _start_client(netns.client, plain)
        try:
            read_until(third, "removing the kill switch table", 20)
            wait_until(lambda: _killswitch_table(netns.client) is None, 10, "the stale table is removed")
            _sigint(third)
        finally:
            stop_process(third)
    finally:
        stop_process(first)


def test_the_bypass_route_follows_the_next_remote(pki, netns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """redirect-gateway, then the first remote goes away: the second remote (reachable only
    through a gateway, so the kernel answers "TUN" for it) gets the bypass route before the
    first packet, the first remote's route goes, and the tunnel comes back through it."""
    other = "198.51.100.1"
    netns.server.run(["ip", "addr", "add", f"{other}/32", "dev", "lo"])
    netns.client.run(["ip", "route", "add", "default", "via", netns.server_v4])
    opts = ServerOptions(proto="udp", wrap="tls-crypt", extra=REDIRECT)
    first = OpenVPNServer(netns.server, pki, opts, tmp_path / "first", listen_v4=netns.server_v4)
    second = OpenVPNServer(netns.server, pki, opts, tmp_path / "second", listen_v4=other)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, netns.server_v4) + f"remote {other} {opts.port}\nconnect-retry 1 2\nserver-poll-timeout 4\n")
    before = namespace_state(netns.client)
    proc: subprocess.Popen[bytes] | None = None
    try:
        first.start()
        proc = _start_client(netns.client, profile)
        tun = _tun_of(read_until(proc, "tunnel up", 30))
        routes = netns.client.run(["ip", "-4", "route"]).stdout
        assert any(ln.startswith(f"{netns.server_v4} dev veth0") for ln in routes.splitlines()), routes  # pinned
        assert _route_dev(netns.client, other) == tun  # everything else: into the tunnel
        first.stop()
        second.start()
        lines = read_until(proc, "tunnel up", 45)
        assert any(f"connecting to {other}" in ln for ln in lines), lines
        routes = netns.client.run(["ip", "-4", "route"]).stdout
        assert f"{other} via {netns.server_v4} dev veth0" in routes, routes
        assert not any(ln.startswith(f"{netns.server_v4} ") for ln in routes.splitlines()), routes  # old pin gone
        assert _route_dev(netns.client, OUTSIDE_V4) == tun
        r = netns.client.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", second.tunnel_v4], check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        _sigint(proc)
        assert namespace_state(netns.client) == before
    finally:
        if proc is not None:
            stop_process(proc)
        first.stop()
        second.stop()
