"""trivpn against Debian's real openvpn 2.6 server, across network namespaces.

Each case: the server runs in one namespace, `python -m trivpn connect` in the other (a
real TUN configured from the PUSH_REPLY), pings cross the tunnel over IPv4 and IPv6 in both
directions, then SIGINT must end the client with exit 0 within 5 s and leave no device,
address or route behind.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.process import namespace_state, read_until, rest_of_output

pytestmark = pytest.mark.root

#: Run a command with every capability dropped (no CAP_NET_ADMIN: no TUN, no routes). The
#: uid stays 0 only so the interpreter under /root stays readable; it confers nothing else.
UNPRIVILEGED = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--"]

CASES = {
    "udp-tlscrypt-aes256gcm": (
        ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM"),
        "auto",
        "AES-256-GCM",
    ),
    "tcp-tlsauth-chacha20": (
        ServerOptions(proto="tcp", wrap="tls-auth", data_ciphers="CHACHA20-POLY1305"),
        "auto",
        "CHACHA20-POLY1305",
    ),
    "udp6-nowrap-aes128gcm": (
        ServerOptions(proto="udp6", wrap="none", data_ciphers="AES-128-GCM"),
        "auto",
        "AES-128-GCM",
    ),
    "udp-tlscrypt-prf": (
        ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM"),
        "prf",
        "AES-256-GCM",
    ),
    "udp-tlsauth-net30-routes": (
        ServerOptions(
            proto="udp",
            wrap="tls-auth",
            topology="net30",
            extra=[
                'push "route 10.203.0.0 255.255.255.0"',
                'push "route-ipv6 fd00:203::/64"',
                'push "redirect-gateway def1"',
            ],
        ),
        "auto",
        "AES-256-GCM",
    ),
    # the same UDP session with data packets moved by trio tasks instead of the threads
    "udp-tlscrypt-trio-datapath": (
        ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM"),
        "auto",
        "AES-256-GCM",
    ),
    "udp-tlscrypt-low-latency": (
        ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="CHACHA20-POLY1305"),
        "auto",
        "CHACHA20-POLY1305",
    ),
}

#: Extra command-line arguments per case.
EXTRA_ARGS = {
    "udp-tlscrypt-trio-datapath": ["--no-data-threads"],
    "udp-tlscrypt-low-latency": ["--low-latency"],
}

#: Routes each case must have installed while the tunnel is up (checked in `ip route`).
EXPECTED_ROUTES = {
    "udp-tlsauth-net30-routes": [
        ("-4", "10.203.0.0/24 "),
        ("-4", "0.0.0.0/1 "),
        ("-4", "128.0.0.0/1 "),
        ("-4", "10.201.0.1 "),  # host route to the server, outside the tunnel
        ("-6", "fd00:203::/64 "),
    ],
}


def _tun_addresses(ns) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    v4 = ns.run(["ip", "-o", "-4", "addr", "show", "scope", "global"]).stdout
    v6 = ns.run(["ip", "-o", "-6", "addr", "show", "scope", "global"]).stdout
    a4 = [ln.split()[3].split("/")[0] for ln in v4.splitlines() if "10.202." in ln]
    a6 = [ln.split()[3].split("/")[0] for ln in v6.splitlines() if "fd00:202:" in ln]
    assert a4 and a6, f"tunnel addresses missing:\n{v4}\n{v6}"
    return a4[0], a6[0]


@pytest.mark.parametrize("case", list(CASES))
def test_connect_ping_both_ways_and_clean_exit(case, pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts, kd, cipher = CASES[case]
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host))
    before = namespace_state(netns.client)
    proc = netns.client.popen(
        [sys.executable, "-m", "trivpn", "connect", str(profile), "--key-derivation", kd, *EXTRA_ARGS.get(case, [])],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        lines = read_until(proc, "tunnel up", 30)
        up = next(ln for ln in lines if "tunnel up" in ln)
        assert cipher in up
        assert ("tls1-prf" if kd == "prf" else "tls-ekm") in up
        assert any("TLS ok" in ln and "trivpn-test-server" in ln for ln in lines)
        threads = any("data-plane threads" in ln for ln in lines)
        # UDP and (since issue 16) direct TCP move data in the data-plane threads by default
        assert threads == ("--no-data-threads" not in EXTRA_ARGS.get(case, [])), lines
        assert any("data-plane threads (TCP" in ln for ln in lines) == (threads and opts.proto == "tcp"), lines
        assert any("low-latency" in ln for ln in lines) == ("--low-latency" in EXTRA_ARGS.get(case, []))
        v4, v6 = _tun_addresses(netns.client)
        for family, prefix in EXPECTED_ROUTES.get(case, []):
            routes = netns.client.run(["ip", family, "route"]).stdout
            assert any(ln.startswith(prefix) for ln in routes.splitlines()), f"{prefix} missing:\n{routes}"
        if case in EXPECTED_ROUTES:
            server_route = netns.client.run(["ip", "route", "get", "10.201.0.1"]).stdout
            assert "veth0" in server_route, server_route
        for target in (server.tunnel_v4, server.tunnel_v6):
            r = netns.client.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", target], check=False)
            assert r.returncode == 0, f"client→{target} failed:\n{r.stdout}{r.stderr}\n{server.log_text()[-3000:]}"
        for target in (v4, v6):
            r = netns.server.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", target], check=False)
            assert r.returncode == 0, f"server→{target} failed:\n{r.stdout}{r.stderr}"
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=5)
        rest = rest_of_output(proc)
        assert rc == 0, f"exit code {rc}:\n{rest}"
        assert "Traceback" not in rest
        # a server that closes the session when it reads our EXIT ends it as asked
        assert "reconnecting" not in rest, rest
        assert namespace_state(netns.client) == before
        if opts.proto.startswith("udp"):
            # explicit exit notification: the server frees our slot at once (cc-exit)
            assert "CC-EEN exit message received by peer" in server.log_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_trivpn_ping_needs_no_root_and_no_tun(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host))
    before = namespace_state(netns.client)
    unpriv = UNPRIVILEGED
    for target in (server.tunnel_v4, server.tunnel_v6):
        r = netns.client.run(
            [*unpriv, sys.executable, "-m", "trivpn", "ping", str(profile), target, "-c", "3", "-i", "0.2"],
            check=False,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "3 packets transmitted, 3 received" in r.stdout, r.stdout
        assert f"bytes from {target}: icmp_seq=1" in r.stdout
    assert namespace_state(netns.client) == before  # no TUN, no address, no route


def test_untrusted_server_certificate_is_one_clear_line(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    server = openvpn_server(opts)
    text = client_profile(pki, opts, server.remote_host)
    text = text.replace(pki.ca_cert.strip(), pki.other_ca_cert.strip())
    profile = tmp_path / "client.ovpn"
    profile.write_text(text)
    # a certificate that does not verify is a restart (anyone on the path can cause it), so
    # `ping` ends at its connect timeout, with the certificate named in its one line
    r = netns.client.run(
        [sys.executable, "-m", "trivpn", "ping", str(profile), server.tunnel_v4, "-c", "1", "--connect-timeout", "6"],
        check=False,
        timeout=60,
    )
    assert r.returncode == 2  # ping: 2 is an error (as iputils' ping), 1 only "no reply"
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "no tunnel within 6 s" in errors[0], r.stderr
    assert "server certificate verification failed" in errors[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_connect_without_root_says_so_in_one_line(pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, "127.0.0.1"))
    r = subprocess.run(
        [*UNPRIVILEGED, sys.executable, "-m", "trivpn", "connect", str(profile)],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1, r.stderr
    assert "root" in errors[0] and "trivpn ping" in errors[0]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_transient_failures_are_reported_while_retrying(proto, pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Started before its server, the client reports each failed attempt, then connects."""
    opts = ServerOptions(proto=proto, wrap="tls-crypt")
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, netns.server_v4))
    proc = netns.client.popen(
        [sys.executable, "-m", "trivpn", "ping", str(profile), "10.202.0.1", "-c", "2", "-i", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        needle = "no answer from the server yet" if proto == "udp" else "Connection refused"
        early = read_until(proc, needle, 15)
        openvpn_server(opts)
        rc = proc.wait(timeout=40)
        out = "\n".join(early) + rest_of_output(proc)
        assert rc == 0, out
        assert "2 packets transmitted, 2 received" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
