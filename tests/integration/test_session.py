"""Long-lived sessions against the real openvpn 2.6 server: renegotiation (issue 4)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trivpn.testing.ovpn_server import ServerOptions, client_profile
from trivpn.testing.process import wait_for_text

pytestmark = pytest.mark.root


def _run_client(netns, profile: Path, log: Path) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    return netns.client.popen(
        [sys.executable, "-m", "trivpn", "connect", str(profile)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize(
    ("who", "wrap", "server_extra", "client_extra"),
    [
        ("server", "tls-auth", ["reneg-sec 2"], ["reneg-sec 0"]),
        ("client", "none", ["reneg-sec 0"], ["reneg-sec 2"]),
    ],
)
def test_continuous_ping_across_many_renegotiations(  # type: ignore[no-untyped-def]
    who, wrap, server_extra, client_extra, pki, netns, openvpn_server, tmp_path: Path
) -> None:
    """A ping every 0.1 s for 20 s while the keys change about every 2 s (key ids wrap 7→1).

    The client offers dynamic tls-crypt, so every renegotiation packet (key id > 0) is
    wrapped with the key exported from the first TLS session — mixed with the tls-auth key
    in one case, alone in the other.
    """
    opts = ServerOptions(proto="udp", wrap=wrap, extra=server_extra)
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, extra=client_extra))
    log = tmp_path / "client.log"
    proc = _run_client(netns, profile, log)
    try:
        wait_for_text(log, "tunnel up", 30)
        r = netns.client.run(
            ["ping", "-c", "200", "-i", "0.1", "-W", "1", server.tunnel_v4], check=False, timeout=60
        )
        m = re.search(r"(\d+) packets transmitted, (\d+) received", r.stdout)
        assert m, r.stdout
        sent, received = int(m.group(1)), int(m.group(2))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
        text = log.read_text()
        assert "dyn-tls-crypt" in text  # pushed protocol-flags: the server agreed
        renegs = re.findall(r"new data keys in use: key id (\d)", text)
        started = "server started a renegotiation" if who == "server" else "renegotiating data keys"
        assert started in text, text
        assert len(renegs) >= 7, text  # wrapped past key id 7 at least once
        assert "1" in renegs[7:] or renegs.count("1") >= 2, renegs
        lost = sent - received
        print(f"{who}-initiated: {len(renegs)} renegotiations, {lost}/{sent} pings lost")
        assert lost <= 2, f"{lost} of {sent} pings lost across {len(renegs)} renegotiations\n{r.stdout[-500:]}"
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tun_link(netns) -> str:  # type: ignore[no-untyped-def]
    """index:name of the client's TUN device (must survive reconnects unchanged)."""
    links = netns.client.run(["ip", "-o", "link", "show", "type", "tun"]).stdout.splitlines()
    assert len(links) == 1, links
    return ":".join(links[0].split(":")[:2])


def _ping_ok(netns, target: str, count: int = 3) -> bool:  # type: ignore[no-untyped-def]
    r = netns.client.run(["ping", "-c", str(count), "-i", "0.2", "-W", "1", target], check=False)
    return r.returncode == 0


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_server_restart_reconnects_with_the_same_tun(  # type: ignore[no-untyped-def]
    how, pki, netns, openvpn_server, tmp_path: Path
) -> None:
    """`restart`: the server says RESTART as it stops; `kill`: it vanishes (ping-restart)."""
    opts = ServerOptions(proto="udp", wrap="tls-crypt", keepalive=(1, 4))
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host))
    log = tmp_path / "client.log"
    proc = _run_client(netns, profile, log)
    try:
        wait_for_text(log, "tunnel up", 30)
        link = _tun_link(netns)
        assert _ping_ok(netns, server.tunnel_v4)
        if how == "kill":
            server._proc.kill()  # type: ignore[union-attr]  # a crash: no goodbye
            server._proc.wait()  # type: ignore[union-attr]
            server._proc = None
        else:
            server.stop()
        wait_for_text(log, "reconnecting in", 20)
        server.start()
        text = wait_for_text(log, "tunnel up", 40, count=2)
        assert text.count("tunnel up") >= 2, text
        assert ("ping-restart" if how == "kill" else "restart") in text
        assert _tun_link(netns) == link  # the same device, never torn down
        assert _ping_ok(netns, server.tunnel_v4)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dead_first_remote_then_good_one(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    server = openvpn_server(opts)
    text = client_profile(pki, opts, server.remote_host)
    good = f"remote {server.remote_host} 1194"
    assert good in text
    # nothing listens on 1199: the first remote never answers (ICMP port unreachable)
    text = text.replace(good, f"remote {server.remote_host} 1199\n{good}\nserver-poll-timeout 3")
    profile = tmp_path / "client.ovpn"
    profile.write_text(text)
    r = netns.client.run(
        [sys.executable, "-m", "trivpn", "ping", str(profile), server.tunnel_v4, "-c", "2", "-i", "0.2"],
        check=False,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert ":1199" in r.stdout and "reconnecting in" in r.stdout
    assert "2 packets transmitted, 2 received" in r.stdout


def test_connect_retry_max_against_a_dead_server_ends_by_itself(pki, netns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt")
    text = client_profile(pki, opts, netns.server_v4)
    text += "\nconnect-retry 1 1\nconnect-retry-max 2\nserver-poll-timeout 2\n"
    profile = tmp_path / "client.ovpn"
    profile.write_text(text)
    start = time.monotonic()
    r = netns.client.run(
        [sys.executable, "-m", "trivpn", "connect", str(profile)], check=False, timeout=60
    )
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and "connect-retry-max" in errors[0], r.stderr
    assert r.stdout.count("reconnecting in") == 1  # two attempts, one pause between them
    assert time.monotonic() - start < 30
    assert "tvpn" not in netns.client.run(["ip", "-o", "link"]).stdout


@pytest.mark.parametrize(("proto", "flag"), [("udp", None), ("tcp", None), ("udp", "-4")])
def test_name_with_v6_and_v4_where_only_v4_answers(  # type: ignore[no-untyped-def]
    proto, flag, pki, netns, openvpn_server, tmp_path: Path
) -> None:
    """`vpn.test` resolves to the server's IPv6 and IPv4 addresses; only IPv4 has a server."""
    opts = ServerOptions(proto=proto, wrap="tls-crypt")
    server = openvpn_server(opts)
    hosts_dir = Path("/etc/netns") / netns.client.name
    hosts_dir.mkdir(parents=True, exist_ok=True)
    try:
        (hosts_dir / "hosts").write_text(
            f"127.0.0.1 localhost\n{netns.server_v6} vpn.test\n{netns.server_v4} vpn.test\n"
        )
        text = client_profile(pki, opts, "vpn.test") + "\nserver-poll-timeout 3\n"
        profile = tmp_path / "client.ovpn"
        profile.write_text(text)
        argv = [sys.executable, "-m", "trivpn", "ping", str(profile), server.tunnel_v4, "-c", "2", "-i", "0.2"]
        r = netns.client.run([*argv, *([flag] if flag else [])], check=False, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        if flag == "-4":
            assert netns.server_v6 not in r.stdout  # IPv6 never tried
        else:
            assert f"[{netns.server_v6}]" in r.stdout  # the v6 address was tried (first)
        assert "2 packets transmitted, 2 received" in r.stdout
    finally:
        for f in hosts_dir.glob("*"):
            f.unlink()
        hosts_dir.rmdir()


def _auth_server_opts(tmp_path: Path) -> ServerOptions:
    """A server that checks username/password with a script (OpenVPN's via-file method)."""
    script = tmp_path / "check-pass.sh"
    script.write_text('#!/bin/sh\n[ "$(sed -n 1p "$1")" = alice ] && [ "$(sed -n 2p "$1")" = s3cret ]\n')
    script.chmod(0o755)
    return ServerOptions(
        proto="udp",
        wrap="tls-crypt",
        extra=["script-security 2", f"auth-user-pass-verify {script} via-file"],
    )


@pytest.mark.parametrize(("password", "ok"), [("s3cret", True), ("wrong", False)])
def test_username_password_checked_by_the_server(  # type: ignore[no-untyped-def]
    password, ok, pki, netns, openvpn_server, tmp_path: Path
) -> None:
    opts = _auth_server_opts(tmp_path)
    server = openvpn_server(opts)
    creds = tmp_path / "creds.txt"
    creds.write_text(f"alice\n{password}\n")
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, extra=[f"auth-user-pass {creds}"]))
    r = netns.client.run(
        [sys.executable, "-m", "trivpn", "ping", str(profile), server.tunnel_v4, "-c", "1"],
        check=False,
        timeout=60,
    )
    if ok:
        assert r.returncode == 0, r.stdout + r.stderr
    else:
        assert r.returncode == 2, r.stdout + r.stderr  # ping: 2 on errors, like iputils
        errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(errors) == 1 and "AUTH_FAILED" in errors[0], r.stderr
        assert "reconnecting" not in r.stdout  # a refused password is not retried


def test_tls_crypt_v2_with_keys_from_openvpn_genkey(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Keys made by `openvpn --genkey`; the 2.6 server answers statelessly (cookie + WKC)."""
    server_key, client_key = tmp_path / "v2-server.key", tmp_path / "v2-client.key"
    subprocess.run(["openvpn", "--genkey", "tls-crypt-v2-server", str(server_key)], check=True, capture_output=True)
    subprocess.run(
        ["openvpn", "--tls-crypt-v2", str(server_key), "--genkey", "tls-crypt-v2-client", str(client_key)],
        check=True,
        capture_output=True,
    )
    opts = ServerOptions(proto="udp", wrap="none", extra=[f"tls-crypt-v2 {server_key}"])
    server = openvpn_server(opts)
    block = f"<tls-crypt-v2>\n{client_key.read_text().strip()}\n</tls-crypt-v2>"
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, extra=[block]))
    r = netns.client.run(
        [sys.executable, "-m", "trivpn", "ping", str(profile), server.tunnel_v4, "-c", "2", "-i", "0.2"],
        check=False,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr + server.log_text()[-3000:]
    assert "2 packets transmitted, 2 received" in r.stdout
    # Not any mention of tls-crypt-v2 (the server echoes its own `tls_crypt_v2_file` option
    # at verb 4): openvpn names the key when it starts unwrapping our WKc, and logs loading
    # the unwrapped client key (the Control Channel Encryption key pair, which this server
    # has no other source of: wrap is none) only if unwrapping succeeded; then the TLS
    # handshake with our certificate runs inside that wrapping.
    log = server.log_text()
    assert "Can not unwrap tls-crypt-v2 client key" not in log
    lines = log.splitlines()
    peer = re.escape(netns.client_v4) + r":\d+ "
    using = [i for i, ln in enumerate(lines) if re.search(peer + "Control Channel: using tls-crypt-v2 key$", ln)]
    assert using, log[-3000:]
    loaded = lines[using[0] + 1 : using[0] + 5]
    for direction in ("Outgoing", "Incoming"):
        assert any(
            re.search(peer + f"{direction} Control Channel Encryption: Cipher 'AES-256-CTR' initialized", ln)
            for ln in loaded
        ), loaded
    assert any(
        re.search(peer + "VERIFY OK: depth=0, .*CN=trivpn-test-client", ln) for ln in lines[using[0] :]
    ), log[-3000:]


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_lport_and_local_bind_the_client_socket(proto, pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto=proto, wrap="tls-crypt")
    server = openvpn_server(opts)
    text = client_profile(pki, opts, server.remote_host).replace("nobind\n", "")
    text += f"\nlocal {netns.client_v4}\nlport 41194\n"
    profile = tmp_path / "client.ovpn"
    profile.write_text(text)
    r = netns.client.run(
        [sys.executable, "-m", "trivpn", "ping", str(profile), server.tunnel_v4, "-c", "1"],
        check=False,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{netns.client_v4}:41194" in server.log_text()


#: Runs inside the server's namespace: one management command, read back with a deadline
#: (the banner line, then the command's SUCCESS:/ERROR: line) instead of sleeping and hoping.
_MANAGEMENT_SCRIPT = r"""
import re, socket, sys, time
deadline = time.monotonic() + 10
s = socket.create_connection(("127.0.0.1", 7505), timeout=5)
buf = b""
def read_until(pattern):
    global buf
    while not re.search(pattern, buf, re.M):
        left = deadline - time.monotonic()
        if left <= 0:
            sys.exit(f"management: timed out waiting for {pattern!r}; got {buf!r}")
        s.settimeout(left)
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"management: closed while waiting for {pattern!r}; got {buf!r}")
        buf += chunk
read_until(rb"^>INFO:.*\n")
buf = b""
s.sendall(sys.argv[1].encode() + b"\n")
read_until(rb"^(SUCCESS|ERROR):.*\n")
print(buf.decode(errors="replace"))
s.sendall(b"quit\n")
s.close()
"""


def _management(netns, command: str) -> str:  # type: ignore[no-untyped-def]
    """Send one command to the server's management interface (inside its namespace)."""
    return str(netns.server.run([sys.executable, "-c", _MANAGEMENT_SCRIPT, command], timeout=15).stdout)


@pytest.mark.parametrize("signal_name", ["HALT", "RESTART"])
def test_server_halt_ends_and_restart_reconnects(  # type: ignore[no-untyped-def]
    signal_name, pki, netns, openvpn_server, tmp_path: Path
) -> None:
    opts = ServerOptions(proto="udp", wrap="tls-crypt", extra=["management 127.0.0.1 7505"])
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host))
    log = tmp_path / "client.log"
    proc = _run_client(netns, profile, log)
    try:
        wait_for_text(log, "tunnel up", 30)
        out = _management(netns, f"client-kill 0 {signal_name}")
        assert "SUCCESS" in out, out
        if signal_name == "HALT":
            assert proc.wait(timeout=10) == 1
            text = log.read_text()
            assert "halted" in text and "reconnecting" not in text, text
            assert "tvpn" not in netns.client.run(["ip", "-o", "link"]).stdout
        else:
            assert wait_for_text(log, "tunnel up", 30, count=2).count("tunnel up") == 2
            assert _ping_ok(netns, server.tunnel_v4)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_auth_token_is_reused_on_reconnect(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The password script accepts exactly one login; the reconnect must use the auth-token."""
    marker = tmp_path / "password-used"
    script = tmp_path / "once.sh"
    script.write_text(
        f'#!/bin/sh\n[ -e {marker} ] && exit 1\ntouch {marker}\n[ "$(sed -n 2p "$1")" = s3cret ]\n'
    )
    script.chmod(0o755)
    opts = ServerOptions(
        proto="udp",
        wrap="tls-crypt",
        extra=[
            "script-security 2",
            f"auth-user-pass-verify {script} via-file",
            "auth-gen-token 600",
            "management 127.0.0.1 7505",
        ],
    )
    server = openvpn_server(opts)
    creds = tmp_path / "creds.txt"
    creds.write_text("alice\ns3cret\n")
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, extra=[f"auth-user-pass {creds}"]))
    log = tmp_path / "client.log"
    proc = _run_client(netns, profile, log)
    try:
        wait_for_text(log, "tunnel up", 30)
        assert marker.exists()
        assert "SUCCESS" in _management(netns, "client-kill 0 RESTART")
        text = wait_for_text(log, "tunnel up", 30, count=2)
        assert text.count("tunnel up") == 2, text + server.log_text()[-2000:]
        assert "AUTH_FAILED" not in text
        assert _ping_ok(netns, server.tunnel_v4)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ping_exit_ends_the_run_when_the_server_goes_silent(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="udp", wrap="tls-crypt", keepalive=(1, 10))
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, extra=["ping-exit 3"]))
    log = tmp_path / "client.log"
    proc = _run_client(netns, profile, log)
    try:
        wait_for_text(log, "tunnel up", 30)
        server._proc.kill()  # type: ignore[union-attr]  # silent: no exit notification
        server._proc.wait()  # type: ignore[union-attr]
        server._proc = None
        assert proc.wait(timeout=15) == 1
        text = log.read_text()
        assert "ping-exit" in text and "reconnecting" not in text, text
        assert "tvpn" not in netns.client.run(["ip", "-o", "link"]).stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
