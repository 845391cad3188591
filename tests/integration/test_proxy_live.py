"""OpenVPN over TCP through REAL proxies from Debian: tinyproxy (HTTP CONNECT) and microsocks
(SOCKS5), each started by the test on its own config.

Layout: the proxy runs in the *server* namespace and listens on the server's veth address;
the OpenVPN server is reached by a name (`HIDDEN_NAME`) that only the server namespace can
resolve (an /etc/netns/<ns>/hosts file, bind-mounted by `ip netns exec`). So the client can
only get there if it hands the name to the proxy, and the proxy's own log must show it.

* `test_*_connect_function_*`: our `open_proxy_transport` (run inside the client namespace)
  reaches the real openvpn server through the real proxy, which answers our hard reset
  with its own (echoing our session id). Also the refusals: wrong password, no password.
* `test_trivpn_ping_through_*`: the whole client (`python -m trivpn ping`) with a profile
  holding `http-proxy` / `socks-proxy`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trivpn.testing.netns import Netns
from trivpn.testing.ovpn_server import ServerOptions, client_profile

pytestmark = pytest.mark.root

HIDDEN_NAME = "vpn.behind-proxy.test"
PROXY_USER = "alice"
PROXY_PASS = "s3cret-Pw"
HTTP_PORT = 8888
SOCKS_PORT = 1080
#: Seconds a proxy gets to start listening.
PROXY_START_TIMEOUT = 10.0

#: Run in the client namespace: open a proxied transport with our code, send a plain
#: P_CONTROL_HARD_RESET_CLIENT_V2 and print what the server answered.
CONNECT_SCRIPT = r"""
import os, sys, trio
from trivpn.errors import TrivpnError
from trivpn.networkio.proxy import open_proxy_transport
from trivpn.profile.profile import ProxySpec

kind, phost, pport, auth, user, pw, target, tport = sys.argv[1:9]

async def main():
    spec = ProxySpec(phost, int(pport), auth, (user, pw) if user else None)
    t = await open_proxy_transport(kind, spec, target, int(tport), connect_timeout=10)
    try:
        sid = os.urandom(8)
        await t.send_batch([bytes([7 << 3]) + sid + b"\x00" + bytes(4)])
        with trio.fail_after(10):
            reply = (await t.recv_batch())[0]
        print("DESCRIBE", t.describe())
        print("SENT-SID", sid.hex())
        print("REPLY", reply.hex())
    finally:
        t.close()

try:
    trio.run(main)
except TrivpnError as exc:
    print("ERROR", type(exc).__name__, exc)
    sys.exit(3)
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        msg = f"`{tool}` is not installed (apt-get install {'tinyproxy' if tool == 'tinyproxy' else 'microsocks'})"
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


@contextlib.contextmanager
def _hosts_entry(ns: Netns, name: str, address: str) -> Iterator[None]:
    """Make `name` resolve to `address` for processes started in `ns` (and nowhere else)."""
    directory = Path("/etc/netns") / ns.name
    directory.mkdir(parents=True, exist_ok=False)
    try:
        base = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
        (directory / "hosts").write_text(f"{base.rstrip()}\n{address} {name}\n")
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_listening(ns: Netns, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + PROXY_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"proxy exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        out = ns.run(["ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"proxy not listening on {port} within {PROXY_START_TIMEOUT}s")


@contextlib.contextmanager
def _running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@contextlib.contextmanager
def tinyproxy(ns: Netns, listen: str, workdir: Path, *, auth: bool) -> Iterator[Path]:
    """tinyproxy in the foreground in `ns`; yields its log file."""
    _need("tinyproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "tinyproxy.log"
    conf = workdir / "tinyproxy.conf"
    lines = [
        f"Port {HTTP_PORT}",
        f"Listen {listen}",
        "Timeout 60",
        "MaxClients 16",
        "LogLevel Info",
        f'LogFile "{log}"',
        f'PidFile "{workdir / "tinyproxy.pid"}"',
        "ConnectPort 1194",
        "Allow 10.201.0.0/24",
        "DisableViaHeader Yes",
    ]
    if auth:
        lines.append(f"BasicAuth {PROXY_USER} {PROXY_PASS}")
    conf.write_text("\n".join(lines) + "\n")
    out = workdir / "tinyproxy.out"
    with out.open("wb") as sink:
        proc = ns.popen(["tinyproxy", "-d", "-c", str(conf)], stdout=sink, stderr=subprocess.STDOUT)
    with _running(proc):
        _wait_listening(ns, HTTP_PORT, proc, out)
        yield log


@contextlib.contextmanager
def microsocks(ns: Netns, listen: str, workdir: Path, *, auth: bool) -> Iterator[Path]:
    """microsocks in `ns`; yields the file its output goes to."""
    _need("microsocks")
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "microsocks.out"
    argv = ["microsocks", "-i", listen, "-p", str(SOCKS_PORT)]
    if auth:
        argv += ["-u", PROXY_USER, "-P", PROXY_PASS]
    with out.open("wb") as sink:
        proc = ns.popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    with _running(proc):
        _wait_listening(ns, SOCKS_PORT, proc, out)
        yield out


def _connect_script(netns, kind: str, port: int, auth: str, user: str, pw: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return netns.client.run(
        [sys.executable, "-c", CONNECT_SCRIPT, kind, netns.server_v4, str(port), auth, user, pw,
         HIDDEN_NAME, "1194"],
        check=False,
        timeout=60,
    )


def _assert_server_reset(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, r.stdout + r.stderr
    fields = dict(ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln)
    reply = bytes.fromhex(fields["REPLY"])
    # P_CONTROL_HARD_RESET_SERVER_V2, key id 0; it ACKs our message 0 and names our session
    assert reply[0] == 8 << 3, reply.hex()
    assert reply[9] == 1 and reply[10:14] == bytes(4), reply.hex()
    assert reply[14:22].hex() == fields["SENT-SID"], reply.hex()


def test_http_connect_function_through_real_tinyproxy(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = openvpn_server(ServerOptions(proto="tcp", wrap="none"))
    with _hosts_entry(netns.server, HIDDEN_NAME, netns.server_v4), tinyproxy(
        netns.server, netns.server_v4, tmp_path / "tp", auth=True
    ) as log:
        r = _connect_script(netns, "http", HTTP_PORT, "basic", PROXY_USER, PROXY_PASS)
        _assert_server_reset(r)
        assert f"{HIDDEN_NAME}:1194 via http proxy {netns.server_v4}:{HTTP_PORT}" in r.stdout
        # the name reached the proxy, which resolved it itself
        assert f"{HIDDEN_NAME}:1194" in log.read_text(errors="replace")

        wrong = _connect_script(netns, "http", HTTP_PORT, "basic", PROXY_USER, "wrong")
        assert wrong.returncode == 3, wrong.stdout + wrong.stderr
        assert "ERROR FatalError" in wrong.stdout and "rejected our credentials" in wrong.stdout

        none = _connect_script(netns, "http", HTTP_PORT, "none", "", "")
        assert none.returncode == 3, none.stdout + none.stderr
        assert "requires authentication" in none.stdout and "407" in none.stdout
    assert "Traceback" not in r.stderr + wrong.stderr + none.stderr
    assert f"TCP connection established with [AF_INET]{netns.server_v4}" in server.log_text()


def test_http_auto_auth_against_real_tinyproxy(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`auto`: first without credentials, then again with them after tinyproxy's 407."""
    openvpn_server(ServerOptions(proto="tcp", wrap="none"))
    with _hosts_entry(netns.server, HIDDEN_NAME, netns.server_v4), tinyproxy(
        netns.server, netns.server_v4, tmp_path / "tp", auth=True
    ):
        r = _connect_script(netns, "http", HTTP_PORT, "auto", PROXY_USER, PROXY_PASS)
        _assert_server_reset(r)


def test_socks5_connect_function_through_real_microsocks(pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = openvpn_server(ServerOptions(proto="tcp", wrap="none"))
    with _hosts_entry(netns.server, HIDDEN_NAME, netns.server_v4), microsocks(
        netns.server, netns.server_v4, tmp_path / "ms", auth=True
    ):
        r = _connect_script(netns, "socks5", SOCKS_PORT, "userpass", PROXY_USER, PROXY_PASS)
        _assert_server_reset(r)
        assert f"{HIDDEN_NAME}:1194 via socks5 proxy {netns.server_v4}:{SOCKS_PORT}" in r.stdout

        wrong = _connect_script(netns, "socks5", SOCKS_PORT, "userpass", PROXY_USER, "wrong")
        assert wrong.returncode == 3 and "rejected our username/password" in wrong.stdout, wrong.stdout

        none = _connect_script(netns, "socks5", SOCKS_PORT, "none", "", "")
        assert none.returncode == 3 and "requires authentication" in none.stdout, none.stdout
    assert f"TCP connection established with [AF_INET]{netns.server_v4}" in server.log_text()


def test_socks5_target_refused_is_a_transport_error(pki, netns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No openvpn server at all: microsocks reports 'connection refused' for the target."""
    with _hosts_entry(netns.server, HIDDEN_NAME, netns.server_v4), microsocks(
        netns.server, netns.server_v4, tmp_path / "ms", auth=False
    ):
        r = _connect_script(netns, "socks5", SOCKS_PORT, "none", "", "")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "ERROR TransportError" in r.stdout and "SOCKS5 proxy refused" in r.stdout


# -- the whole client (needs Client._connect to use the proxy) -----------------------------

@pytest.mark.parametrize("kind", ["http", "socks5"])
def test_trivpn_ping_through_real_proxy(kind: str, pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts = ServerOptions(proto="tcp", wrap="tls-crypt")
    server = openvpn_server(opts)
    (tmp_path / "proxy-auth.txt").write_text(f"{PROXY_USER}\n{PROXY_PASS}\n")
    os.chmod(tmp_path / "proxy-auth.txt", 0o600)
    if kind == "http":
        line = f"http-proxy {netns.server_v4} {HTTP_PORT} proxy-auth.txt basic"
        proxy = tinyproxy(netns.server, netns.server_v4, tmp_path / "tp", auth=True)
    else:
        line = f"socks-proxy {netns.server_v4} {SOCKS_PORT} proxy-auth.txt"
        proxy = microsocks(netns.server, netns.server_v4, tmp_path / "ms", auth=True)
    profile = tmp_path / "client.ovpn"
    profile.write_text(
        client_profile(pki, opts, HIDDEN_NAME, extra=[line, "http-proxy-option AGENT trivpn-test"]
                       if kind == "http" else [line])
    )
    with _hosts_entry(netns.server, HIDDEN_NAME, netns.server_v4), proxy:
        r = netns.client.run(
            [sys.executable, "-m", "trivpn", "ping", str(profile), server.tunnel_v4, "-c", "3", "-i", "0.2"],
            check=False,
            timeout=90,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 packets transmitted, 3 received" in r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    # only the proxy could have reached the server: its address is the one the server saw
    assert f"TCP connection established with [AF_INET]{netns.server_v4}" in server.log_text()
