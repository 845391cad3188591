"""`trivpn relay --config` and `trivpn expose --config` as real processes on loopback (no
root): per-client token and limits on the relay, two tunnels over one expose connection,
a flag overriding the file, and SIGTERM ending both with exit 0."""

from __future__ import annotations

import os
import pathlib
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from helpers.reverse import HOST, free_port

from trivpn.testing.process import read_until, rest_of_output, stop_process

TOKEN = "0123456789abcdef-live-token"


class _Tagged(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(1024)
        self.request.sendall(self.server.tag + data)  # type: ignore[attr-defined]


@pytest.fixture
def services() -> Iterator[list[int]]:
    servers = []
    for tag in (b"A:", b"B:"):
        srv = socketserver.ThreadingTCPServer((HOST, 0), _Tagged)
        srv.daemon_threads = True
        srv.tag = tag  # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    yield [s.server_address[1] for s in servers]
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _spawn(*argv: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRIVPN_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "trivpn", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def test_relay_and_expose_from_config_files(tmp_path: pathlib.Path, services: list[int]) -> None:
    tport, start = free_port(), free_port()
    (tmp_path / "alice.token").write_text(TOKEN + "\n")
    relay_conf = tmp_path / "relay.toml"
    relay_conf.write_text(
        f'addr = "{HOST}:{tport}"\nstart_port = {start}\nend_port = {start + 9}\n'
        'http_log = false\n[[clients]]\nname = "alice"\ntoken_file = "alice.token"\n'
        'port_quota = 2\nbandwidth = "50 MiB/s"\n'
    )
    expose_conf = tmp_path / "expose.toml"
    expose_conf.write_text(
        f'server = "{HOST}:1"\ntoken_file = "alice.token"\nreconnect = false\n'
        f'[[tunnels]]\nname = "alpha"\nlocal = "{HOST}:{services[0]}"\n'
        f'[[tunnels]]\nname = "beta"\nlocal = "{HOST}:{services[1]}"\nremote_port = {start + 7}\n'
    )
    relay = _spawn("relay", "--config", str(relay_conf))
    expose = None
    try:
        read_until(relay, "relay listening", 15)
        # --server on the command line wins over the file's (wrong) one
        expose = _spawn("expose", "--config", str(expose_conf), "--server", f"{HOST}:{tport}")
        lines: list[str] = []
        for _ in range(2):
            if sum("public address:" in ln for ln in lines) >= 2:
                break
            lines += read_until(expose, "public address:", 15)
        addrs = [ln.split("public address: ")[1] for ln in lines if "public address:" in ln]
        assert addrs == [f"{HOST}:{start}", f"{HOST}:{start + 7}"]
        for addr, tag in zip(addrs, (b"A:", b"B:"), strict=True):
            with socket.create_connection((HOST, int(addr.rsplit(":", 1)[1])), timeout=10) as s:
                s.sendall(b"hello")
                assert s.recv(100) == tag + b"hello"
        # a third tunnel would exceed alice's quota of 2: a second expose is refused
        third = _spawn(
            "expose",
            "--server",
            f"{HOST}:{tport}",
            "--local",
            f"{HOST}:{services[0]}",
            "--token-file",
            str(tmp_path / "alice.token"),
            "--no-reconnect",
        )
        try:
            assert third.wait(timeout=20) == 1
            err = third.stderr.read().decode() if third.stderr else ""
            assert "already uses its quota of 2 port(s)" in err, err
        finally:
            stop_process(third)
    finally:
        if expose is not None:
            stop_process(expose)
        stop_process(relay)
    assert relay.returncode == 0 and expose is not None and expose.returncode == 0
    assert "client alice" in rest_of_output(relay)
