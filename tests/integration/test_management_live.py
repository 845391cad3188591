"""The management interface of a running `trivpn connect` and `trivpn serve`, driven by code
nobody here wrote (PyPI `openvpn-management-api`), and the same script run against Debian's
openvpn in the same role to prove the script.

Client role: the client runs in the client namespace against Debian's openvpn server, its
management on a unix socket (reachable from the test: unix sockets are not bound to a network
namespace). The script waits for CONNECTED, reads state/status/bytecount, throws SIGUSR1
(the session must come back: two CONNECTED entries in the history with a
RECONNECTING,SIGUSR1 between) and ends the daemon with SIGTERM.

Server role: the server (management-client-auth) runs in the server namespace, Debian's
openvpn client connects; the script admits it on `>CLIENT:CONNECT` with client-auth-nt,
waits for ESTABLISHED, reads status 2, load-stats
and bytecount, kills the client by common name, waits for DISCONNECT and ends the server
with SIGTERM.

Quirks of the library: replies are joined without line breaks; its reader thread turns a
closed socket into endless reconnect attempts (and `send_sigterm()` races the daemon's exit
into that loop), so the script detaches the library first (`disconnect(_quit=False)`) and
throws the final SIGTERM over a plain socket; notifications other than `>CLIENT:` land in
its reply queue, so the script enables no real-time output besides bytecount 3600 / 0.
"""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.require import require_module

from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import ServerOptions, client_profile, server_config
from trivpn.testing.pki import PKI, common_name
from trivpn.testing.process import read_until, rest_of_output, stop_process

pytestmark = pytest.mark.root

require_module("openvpn_management_api")
from openvpn_management_api.events import register_event  # noqa: E402
from openvpn_management_api.events.base import BaseEvent  # noqa: E402
from openvpn_management_api.events.client import ClientEvent  # noqa: E402
from openvpn_management_api.vpn import VPN  # noqa: E402


@register_event
class ByteCountEvent(BaseEvent):  # type: ignore[misc]  # the library is untyped
    """`>BYTECOUNT:` / `>BYTECOUNT_CLI:` notifications, through the library's own event
    registry. It has no parser for them, so it would queue such a line as the reply of
    whatever command waits next, and that command would never see its reply end: with
    `bytecount 3600` set, Debian's openvpn server sends `>BYTECOUNT_CLI` at the client's
    next packet (a PUSH_REQUEST can land between two commands), which hung the script
    after `bytecount 0` in two CI runs."""

    @classmethod
    def has_begun(cls, line: str) -> bool:
        return line.startswith(">BYTECOUNT")

    @classmethod
    def has_ended(cls, line: str) -> bool:
        return True

    @classmethod
    def parse_raw(cls, lines: list[str]) -> ByteCountEvent:
        return cls()

UP_TIMEOUT = 30.0
IMPLEMENTATIONS = ["trivpn", "openvpn"]


#: what the running script did last (shown when it hangs)
PROGRESS: list[str] = []


def step(text: str) -> None:
    PROGRESS.append(text)


def bounded(fn: Callable[[], dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Run the blocking script in a daemon thread; a hang fails the test instead of it."""
    PROGRESS.clear()
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # reported in the test's thread
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert box, f"the management script did not finish within {timeout}s; its steps: {PROGRESS}"
    if isinstance(box[0], BaseException):
        raise box[0]
    result: dict[str, Any] = box[0]
    return result


def _state_name(vpn: VPN) -> str:
    raw = vpn.send_command("state")
    fields = raw.split(",")
    return fields[1] if len(fields) > 1 else ""


def _wait_state(vpn: VPN, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _state_name(vpn) == name:
            return
        time.sleep(0.1)
    raise AssertionError(f"state {name} not reached within {timeout}s")


def sigterm(sock: str) -> str:
    """`signal SIGTERM` over a plain connection (after the library let go of its own)."""
    step("signal SIGTERM")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(UP_TIMEOUT)
        raw.connect(sock)
        raw.sendall(b"signal SIGTERM\n")
        data = b""
        while b"SIGTERM thrown" not in data and b"ERROR" not in data:
            chunk = raw.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


def detach(vpn: VPN) -> None:
    step("detach")
    vpn.disconnect(_quit=False)


def drive_client(sock: str) -> dict[str, Any]:
    """The script for a client-role daemon."""
    vpn = VPN(unix_socket=sock)
    vpn.connect()
    result: dict[str, Any] = {"version": vpn.version}
    _wait_state(vpn, "CONNECTED", UP_TIMEOUT)
    result["state"] = vpn.get_state()
    result["status"] = vpn.send_command("status")
    result["bytecount"] = vpn.send_command("bytecount 3600")
    result["bytecount_off"] = vpn.send_command("bytecount 0")
    result["kill"] = vpn.send_command("kill somebody")
    result["signal"] = vpn.send_command("signal SIGUSR1")
    deadline = time.monotonic() + UP_TIMEOUT
    history = ""
    while time.monotonic() < deadline:
        history = vpn.send_command("state all")
        if history.count(",CONNECTED,SUCCESS,") >= 2:
            break
        time.sleep(0.2)
    result["history"] = history
    detach(vpn)
    result["sigterm"] = sigterm(sock)
    return result


def attach_server(sock: str) -> tuple[VPN, queue.Queue[Any]]:
    """Connect before any client does (a >CLIENT:CONNECT goes only to who is connected)."""
    events: queue.Queue[Any] = queue.Queue()
    vpn = VPN(unix_socket=sock)
    vpn.register_callback(ClientEvent, events.put)
    vpn.connect()
    return vpn, events


def drive_server(vpn: VPN, events: queue.Queue[Any], sock: str, cn: str) -> dict[str, Any]:
    """The script for a server-role daemon with management-client-auth."""
    result: dict[str, Any] = {"version": vpn.version, "events": []}

    def next_event(kind: str) -> Any:
        step(f"waiting for {kind}")
        while True:
            event = events.get(timeout=UP_TIMEOUT)
            result["events"].append(event.type)
            if event.type == kind:
                return event

    def command(text: str) -> str:
        step(text)
        reply: str = vpn.send_command(text)
        return reply

    connect = next_event("CONNECT")
    result["connect_env"] = dict(connect.environment)
    result["auth"] = command(f"client-auth-nt {connect.client_id} {connect.key_id}")
    established = next_event("ESTABLISHED")
    result["established_env"] = dict(established.environment)
    result["cid"] = connect.client_id
    result["status"] = command("status 2")  # its get_status() joins the lines first
    step("load-stats")
    result["stats"] = vpn.get_stats()
    result["bytecount"] = command("bytecount 3600")
    result["bytecount_off"] = command("bytecount 0")
    result["kill"] = command(f"kill {cn}")
    result["disconnect_env"] = dict(next_event("DISCONNECT").environment)
    detach(vpn)
    result["sigterm"] = sigterm(sock)
    return result


def _wait_listening(sock: Path, proc: subprocess.Popen[bytes], impl: str) -> None:
    """Until the daemon accepts management connections (it says so on its output)."""
    if impl == "trivpn":
        read_until(proc, "management interface listening", UP_TIMEOUT)
    else:
        read_until(proc, "MANAGEMENT: unix domain socket listening", UP_TIMEOUT)
    assert sock.exists()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_client_management(impl: str, pki: PKI, netns: NetnsPair, openvpn_server: Any, tmp_path: Path) -> None:
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM")
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host))
    sock = tmp_path / "mgmt.sock"
    if impl == "trivpn":
        argv = [sys.executable, "-m", "trivpn", "connect", str(profile), "--management", str(sock)]
    else:
        argv = ["openvpn", "--config", str(profile), "--management", str(sock), "unix"]
    proc = netns.client.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_listening(sock, proc, impl)
        result = bounded(lambda: drive_client(str(sock)), 3 * UP_TIMEOUT)
        rc = proc.wait(timeout=15)
    finally:
        stop_process(proc)
        output = rest_of_output(proc)
    assert rc == 0, output[-3000:]
    assert "Traceback" not in output
    assert result["version"] and result["version"].startswith("2.6.")
    state = result["state"]
    assert state.state_name == "CONNECTED" and state.desc_string == "SUCCESS"
    assert str(state.remote_addr) == netns.server_v4 and state.remote_port == 1194
    assert str(state.local_virtual_v4_addr).startswith("10.202.0.")
    status = result["status"]
    assert status.startswith("OpenVPN STATISTICS") and "TCP/UDP read bytes," in status and status.endswith("END")
    assert result["bytecount"] == result["bytecount_off"] == "SUCCESS: bytecount interval changed"
    assert result["kill"] == "ERROR: The 'kill' command is not supported by the current daemon mode"
    assert result["signal"] == "SUCCESS: signal SIGUSR1 thrown"
    history = result["history"]
    assert history.count(",CONNECTED,SUCCESS,") >= 2, history
    assert ",RECONNECTING,SIGUSR1," in history, history
    assert "SUCCESS: signal SIGTERM thrown" in result["sigterm"]


def _write_server(pki: PKI, workdir: Path, opts: ServerOptions, local: str) -> Path:
    for name, text in (("ca.crt", pki.ca_cert), ("server.crt", pki.server_cert),
                       ("server.key", pki.server_key), ("ta.key", pki.static_key)):
        (workdir / name).write_text(text)
        (workdir / name).chmod(0o600)
    conf = workdir / "server.conf"
    conf.write_text(server_config(opts, dev="tun", local=local, workdir=workdir))
    return conf


def _run_server_script(impl: str, pki: PKI, netns: NetnsPair, openvpn_server: Any, tmp_path: Path) -> dict[str, Any]:
    """The server-role script against `impl` (trivpn serve, or Debian's openvpn) with
    management-client-auth, Debian's openvpn as the client."""
    sock = tmp_path / "mgmt.sock"
    extra = [f"management {sock} unix", "management-client-auth", "auth-user-pass-optional"]
    opts = ServerOptions(proto="udp", wrap="tls-crypt", data_ciphers="AES-256-GCM", extra=extra)
    daemon = None
    if impl == "trivpn":
        workdir = tmp_path / "server"
        workdir.mkdir()
        conf = _write_server(pki, workdir, opts, netns.server_v4)
        daemon = netns.server.popen(
            [sys.executable, "-m", "trivpn", "serve", str(conf)], cwd=workdir,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        remote = netns.server_v4
    else:
        server = openvpn_server(opts)
        remote = server.remote_host
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, remote))
    client = None
    try:
        if daemon is not None:
            _wait_listening(sock, daemon, impl)
        vpn, events = attach_server(str(sock))
        client = netns.client.popen(
            ["openvpn", "--config", str(profile), "--verb", "3"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        result = bounded(lambda: drive_server(vpn, events, str(sock), common_name(pki.client_cert)), 3 * UP_TIMEOUT)
        if daemon is not None:
            assert daemon.wait(timeout=15) == 0
    finally:
        if client is not None:
            stop_process(client)
        if daemon is not None:
            stop_process(daemon)
            output = rest_of_output(daemon)
            assert "Traceback" not in output, output[-3000:]
        else:
            server.stop()  # free the port for the next run in the same namespace
    return result


def _headers(status: str) -> list[str]:
    """The HEADER lines of a `status 2` reply the library joined into one string."""
    return [part.split("HEADER,")[1] for part in status.split("END")[0].split("\n") if "HEADER," in part]


def test_server_management(pki: PKI, netns: NetnsPair, openvpn_server: Any, tmp_path: Path) -> None:
    """The same script against trivpn serve and Debian's openvpn server; then the two are
    compared: the same events, trivpn's ENV keys a subset of openvpn's with the same values
    where they are not per-run, the same status 2 column headers."""
    results = {}
    for impl in IMPLEMENTATIONS:
        (tmp_path / impl).mkdir()
        try:
            results[impl] = _run_server_script(impl, pki, netns, openvpn_server, tmp_path / impl)
        except AssertionError as exc:
            raise AssertionError(f"{impl}: {exc}") from None
    cn = common_name(pki.client_cert)
    for impl, result in results.items():
        assert result["version"].startswith("2.6."), impl
        assert result["events"][0] == "CONNECT" and "ESTABLISHED" in result["events"], (impl, result["events"])
        assert result["events"][-1] == "DISCONNECT", impl
        connect_env = result["connect_env"]
        assert connect_env["common_name"] == cn and connect_env["untrusted_ip"] == netns.client_v4
        assert connect_env["IV_PROTO"].isdigit() and connect_env["IV_VER"].startswith("2.6")
        assert result["established_env"]["ifconfig_pool_remote_ip"] == "10.202.0.2"
        assert result["auth"] == "SUCCESS: client-auth command succeeded"
        status = result["status"]
        assert status.startswith("TITLE,") and f"CLIENT_LIST,{cn},{netns.client_v4}:" in status, status
        assert result["stats"].client_count == 1
        assert result["bytecount"] == result["bytecount_off"] == "SUCCESS: bytecount interval changed"
        assert result["kill"] == f"SUCCESS: common name '{cn}' found, 1 client(s) killed"
        assert "SUCCESS: signal SIGTERM thrown" in result["sigterm"]
        assert int(result["disconnect_env"]["bytes_received"]) >= 0  # trivpn's: data only, maybe none yet
    ours, theirs = results["trivpn"], results["openvpn"]
    assert [e for e in ours["events"] if e != "ADDRESS"] == [e for e in theirs["events"] if e != "ADDRESS"]
    # values that differ between two runs, or between the two servers' set-ups (the test
    # harness names openvpn's device; the byte counts differ by design, see docs/management.md)
    per_run = {"untrusted_port", "trusted_port", "time_unix", "time_ascii", "time_duration", "bytes_received",
               "bytes_sent", "IV_HWADDR", "daemon_pid", "dev"}
    for block in ("connect_env", "established_env", "disconnect_env"):
        missing = set(ours[block]) - set(theirs[block])
        assert not missing, f"{block}: trivpn sends keys openvpn does not: {missing}"
        differ = {k for k in ours[block] if k not in per_run and ours[block][k] != theirs[block][k]}
        assert not differ, {k: (ours[block][k], theirs[block][k]) for k in differ}
