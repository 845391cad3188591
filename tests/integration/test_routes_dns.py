"""Routing options and DNS of `trivpn connect`, checked in the kernel against OpenVPN's client.

For each case the same profile runs first with Debian's openvpn 2.6 client, then with
`trivpn connect`, in the same client namespace against the same real server; the routing
tables (`ip route`, `ip -6 route`, the TUN's name normalised) must be identical, and every
route must be gone after SIGINT. DNS: `ip netns exec` gives the namespace its own
/etc/resolv.conf (bind-mounted from /etc/netns/NAME/resolv.conf); the pushed server must
be in it while connected and the original bytes must come back after SIGINT and after
SIGKILL followed by a new run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.routing import internet_shape, reference_client, routes

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import OpenVPNServer, ServerOptions, client_profile
from trivpn.testing.pki import PKI
from trivpn.testing.process import namespace_state, read_until, rest_of_output, stop_process

pytestmark = pytest.mark.root

PUSHED_ROUTES = ['push "route 10.211.0.0 255.255.0.0"', 'push "route 10.212.0.0 255.255.0.0"']

#: case -> (server push lines, profile lines)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "redirect-gateway-def1": ([], ["redirect-gateway def1"]),
    "route-route-ipv6-metric": (
        [],
        ["route 10.210.0.0 255.255.0.0", "route 10.213.0.0 255.255.255.0 default 9",
         "route-ipv6 fd00:210::/64", "route-metric 7"],
    ),
    "block-ipv6": ([], ["block-ipv6", "redirect-gateway def1 ipv6"]),
    "block-local": ([], ["redirect-gateway def1 block-local"]),
    "pushed-redirect-ipv6": (['push "redirect-gateway def1 ipv6"', *PUSHED_ROUTES], []),
    # the pushed flags add to the profile's (its ipv6 stays); route-metric reaches ::/3 & co.;
    # a route via the LAN router goes out of the LAN interface (the kernel picks it);
    # route-ipv6 without /bits is a /64
    "redirect-merge-metric-lan-route": (
        ['push "redirect-gateway def1"'],
        ["redirect-gateway def1 ipv6", "route-metric 7", "route 10.215.0.0 255.255.0.0 10.201.0.1",
         "route-ipv6 fd00:215::"],
    ),
    "pull-filter-ignore": (PUSHED_ROUTES, ['pull-filter ignore "route 10.211."']),
    "route-nopull": (
        [*PUSHED_ROUTES, 'push "route-ipv6 fd00:214::/64"', 'push "redirect-gateway def1"'],
        ["route-nopull"],
    ),
    # over IPv6 to a server on the link: its host route (metric 1) instead of the IPv4 one
    "udp6-redirect-ipv6": ([], ["redirect-gateway def1 ipv6"]),
}
#: cases whose transport is UDP over IPv6 (the server's veth address)
UDP6 = {"udp6-redirect-ipv6"}

#: routes each case must show (so an identical but empty result cannot pass)
MUST_HAVE = {
    "redirect-gateway-def1": ["-4 0.0.0.0/1 via 10.202.0.1 dev TUN", "-4 10.201.9.1 via 10.201.0.1 dev veth0"],
    "route-route-ipv6-metric": ["-4 10.210.0.0/16 via 10.202.0.1 dev TUN metric 7",
                                "-4 10.213.0.0/24 via 10.202.0.1 dev TUN metric 9"],
    "block-ipv6": ["-6 2000::/4 dev TUN"],
    "block-local": ["-4 10.201.0.0/25 via 10.202.0.1 dev TUN", "-4 10.201.0.128/25 via 10.202.0.1 dev TUN",
                    "-4 10.201.0.1 via 10.201.0.1 dev veth0"],
    "pushed-redirect-ipv6": ["-6 fc00::/7 dev TUN", "-4 10.211.0.0/16 via 10.202.0.1 dev TUN"],
    "redirect-merge-metric-lan-route": ["-6 ::/3 dev TUN metric 7", "-4 0.0.0.0/1 via 10.202.0.1 dev TUN",
                                        "-4 10.215.0.0/16 via 10.201.0.1 dev veth0", "-6 fd00:215::/64 dev TUN"],
    "pull-filter-ignore": ["-4 10.212.0.0/16 via 10.202.0.1 dev TUN"],
    "route-nopull": [],
    "udp6-redirect-ipv6": ["-6 fd00:201::1 dev veth0 metric 1", "-6 ::/3 dev TUN", "-4 0.0.0.0/1 via 10.202.0.1"],
}
MUST_NOT_HAVE = {
    "pull-filter-ignore": ["10.211.0.0/16"],
    "route-nopull": ["10.211.0.0/16", "10.212.0.0/16", "fd00:214::/64", "0.0.0.0/1"],
}


def _server(
    netns: NetnsPair, pki: PKI, tmp_path: Path, remote: str, push: list[str], proto: str = "udp"
) -> OpenVPNServer:
    opts = ServerOptions(proto=proto, wrap="tls-crypt", extra=push)
    server = OpenVPNServer(
        netns.server, pki, opts, tmp_path / "server", listen_v4=remote, listen_v6=netns.server_v6
    )
    server.start()
    return server


def _trivpn(netns: NetnsPair, profile: Path, *args: str) -> subprocess.Popen[bytes]:
    return netns.client.popen(
        [sys.executable, "-m", "trivpn", "connect", str(profile), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _interrupt(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=10)
    rest = rest_of_output(proc)
    assert rc == 0 and "Traceback" not in rest, rest
    return rest


def _has(table: list[str], needle: str) -> bool:
    return any(line.startswith(needle) for line in table)


@pytest.mark.parametrize("case", list(CASES))
def test_routes_match_openvpns_client(case: str, pki: PKI, netns: NetnsPair, tmp_path: Path) -> None:
    push, extra = CASES[case]
    remote = internet_shape(netns)
    proto = "udp6" if case in UDP6 else "udp"
    if case in UDP6:
        remote = netns.server_v6
    server = _server(netns, pki, tmp_path, remote, push, proto)
    try:
        profile = tmp_path / "client.ovpn"
        profile.write_text(client_profile(pki, server.opts, remote, extra=extra))
        before = namespace_state(netns.client)
        with reference_client(netns, profile, tmp_path / "openvpn-client.log"):
            theirs = routes(netns)
        assert namespace_state(netns.client) == before
        proc = _trivpn(netns, profile, "--no-dns")
        try:
            read_until(proc, "tunnel up", 30)
            ours = routes(netns)
            if case == "block-ipv6":
                r = netns.client.run(["ping", "-6", "-c", "1", "-W", "2", "2001:db8::1"], check=False)
                assert r.returncode != 0 and "unreachable" in (r.stdout + r.stderr).lower(), r.stdout + r.stderr
                r = netns.client.run(["ping", "-c", "1", "-W", "2", server.tunnel_v4], check=False)
                assert r.returncode == 0, r.stdout  # IPv4 still flows
            _interrupt(proc)
        finally:
            stop_process(proc)
        assert namespace_state(netns.client) == before
    finally:
        server.stop()
    assert ours == theirs, "trivpn:\n" + "\n".join(ours) + "\nopenvpn:\n" + "\n".join(theirs)
    for needle in MUST_HAVE[case]:
        assert _has(ours, needle), f"{needle} missing:\n" + "\n".join(ours)
    for net in MUST_NOT_HAVE.get(case, []):
        assert not any(net in line for line in ours), "\n".join(ours)


def test_pushed_default_route_keeps_the_server_reachable(pki: PKI, netns: NetnsPair, tmp_path: Path) -> None:
    """`route 0.0.0.0 0.0.0.0` without redirect-gateway: trivpn pins the server (OpenVPN does not).

    The client's own default route has metric 100 (as a DHCP client sets it), so the pushed
    one (metric 0) wins and would carry the packets to the server into the tunnel itself.
    """
    remote = internet_shape(netns)
    netns.client.run(["ip", "route", "replace", "default", "via", netns.server_v4, "metric", "100"])
    netns.client.run(["ip", "route", "del", "default", "via", netns.server_v4, "metric", "0"])
    server = _server(netns, pki, tmp_path, remote, ['push "route 0.0.0.0 0.0.0.0"'])
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, server.opts, remote))
    proc = _trivpn(netns, profile, "--no-dns")
    try:
        read_until(proc, "tunnel up", 30)
        table = routes(netns)
        assert _has(table, "-4 10.201.9.1 via 10.201.0.1 dev veth0"), table
        assert _has(table, "-4 default via 10.202.0.1 dev TUN"), table
        assert "dev veth0" in netns.client.run(["ip", "route", "get", remote]).stdout
        r = netns.client.run(["ping", "-c", "2", "-i", "0.2", "-W", "2", server.tunnel_v4], check=False)
        assert r.returncode == 0, r.stdout
        _interrupt(proc)
    finally:
        stop_process(proc)
        server.stop()


# ---- DNS -------------------------------------------------------------------------------------

ORIGINAL_RESOLV = b"# the namespace's own\nnameserver 192.0.2.53\nsearch home.test\noptions edns0\n"


@pytest.fixture
def netns_resolv(netns: NetnsPair) -> Iterator[Path]:
    """/etc/netns/<client>/resolv.conf: what `ip netns exec` shows as /etc/resolv.conf."""
    directory = Path("/etc/netns") / netns.client.name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "resolv.conf"
    path.write_bytes(ORIGINAL_RESOLV)
    yield path
    path.unlink(missing_ok=True)
    directory.rmdir()


def test_pushed_dns_in_resolv_conf_restored_after_sigint_and_after_sigkill(
    pki: PKI, netns: NetnsPair, tmp_path: Path, netns_resolv: Path
) -> None:
    remote = internet_shape(netns)
    push = ['push "dhcp-option DNS 10.202.0.53"', 'push "dhcp-option DOMAIN corp.test"', 'push "redirect-gateway def1"']
    server = _server(netns, pki, tmp_path, remote, push)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, server.opts, remote))
    env = {**os.environ, "TRIVPN_STATE_DIR": str(tmp_path / "state")}

    def start() -> subprocess.Popen[bytes]:
        return netns.client.popen(
            [sys.executable, "-m", "trivpn", "connect", str(profile)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )

    def shown() -> str:
        return netns.client.run(["cat", "/etc/resolv.conf"]).stdout

    try:
        proc = start()
        try:
            read_until(proc, "tunnel up", 30)
            text = shown()
            assert "nameserver 10.202.0.53" in text and "192.0.2.53" not in text, text
            assert "search corp.test home.test" in text and "options edns0" in text, text
            assert netns_resolv.read_text() == text  # written in place, through the bind mount
            _interrupt(proc)
        finally:
            stop_process(proc)
        assert netns_resolv.read_bytes() == ORIGINAL_RESOLV

        proc = start()
        try:
            read_until(proc, "tunnel up", 30)
            assert "nameserver 10.202.0.53" in shown()
            proc.kill()  # SIGKILL: no cleanup at all
            proc.wait(timeout=10)
        finally:
            stop_process(proc)
        assert b"10.202.0.53" in netns_resolv.read_bytes()  # left behind, as a crash does

        proc = start()
        try:
            lines = read_until(proc, "tunnel up", 30)
            assert any("earlier trivpn run" in ln for ln in lines), lines
            assert "nameserver 10.202.0.53" in shown()
            _interrupt(proc)
        finally:
            stop_process(proc)
        assert netns_resolv.read_bytes() == ORIGINAL_RESOLV
        assert list((tmp_path / "state").glob("resolv-*.json")) == []

        proc = netns.client.popen(
            [sys.executable, "-m", "trivpn", "connect", str(profile), "--no-dns"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )
        try:
            read_until(proc, "tunnel up", 30)
            assert netns_resolv.read_bytes() == ORIGINAL_RESOLV
            _interrupt(proc)
        finally:
            stop_process(proc)
    finally:
        server.stop()


def test_pull_filter_reject_restarts_the_session(pki: PKI, netns: NetnsPair, tmp_path: Path) -> None:
    """As OpenVPN: a rejected pushed option ends the session, and the client tries again."""
    remote = internet_shape(netns)
    server = _server(netns, pki, tmp_path, remote, PUSHED_ROUTES)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, server.opts, remote, extra=['pull-filter reject "route 10.211."']))
    before = namespace_state(netns.client)
    proc = _trivpn(netns, profile, "--no-dns")
    try:
        lines = read_until(proc, "reconnecting in", 30)
        assert any("rejected by pull-filter" in ln for ln in lines), lines
        assert not any("tunnel up" in ln for ln in lines), lines
        read_until(proc, "rejected by pull-filter", 30)  # the next attempt meets it again
        assert not any(r.startswith("-4 10.21") for r in routes(netns))
        _interrupt(proc)
    finally:
        stop_process(proc)
        server.stop()
    assert namespace_state(netns.client) == before
