"""Differential test: the same management input to Debian's openvpn and to our core.

openvpn runs as a client held by `--management-hold` (it never releases, so it sends no
packet), with `--dev null` and a management password file, on loopback only. Each command
is followed by `pid`, whose reply marks the end of the command's answer; the replies that
do not depend on the process (pid, times, version title) must be byte-identical.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers.require import in_ci

from trivpn.management.core import ManagementConnection

# a developer machine without openvpn skips; CI (.ci/run installs Debian's openvpn) must not
pytestmark = pytest.mark.skipif(
    shutil.which("openvpn") is None and not in_ci(), reason="needs Debian's openvpn"
)

COMMANDS = [
    "bogus", "HOLD", "pid;x", "#comment", "", "  ", "hold", "hold bogus", "hold off", "hold on",
    "state on", "state off", "echo on", "echo off", "echo all", "echo", "log", "log off",
    "log bogus", "state bogus", "bytecount", "bytecount 0", "bytecount x", "signal",
    "signal SIGFOO", "username", 'username Auth "unterminated', "username 'Auth", "x" * 300,
    "kill x", "kill 1.2.3.4:5", "client-kill 1", "client-kill x", "client-auth 1",
    "client-auth-nt 1 2", "client-deny 1 2 x", 'client-deny 1 2 "x y" "z"', "auth-retry interact",
    "auth-retry", "load-stats", "version 3",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def read_until(stream: trio.abc.Stream, buffer: bytearray, marker: bytes) -> bytes:
    while marker not in buffer:
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF before {marker!r}"
        buffer += chunk
    end = buffer.index(marker) + len(marker)
    out = bytes(buffer[:end])
    del buffer[:end]
    return out


async def start_openvpn(tmp_path: Path, port: int) -> trio.Process:
    (tmp_path / "pw").write_text("sekrit\n")
    (tmp_path / "up").write_text("user\npass\n")
    argv = [
        "openvpn", "--client", "--dev", "null", "--proto", "udp", "--remote", "127.0.0.1", "1",
        "--nobind", "--ca", "/dev/null", "--verb", "3", "--management-hold",
        "--auth-user-pass", str(tmp_path / "up"),
        "--management", "127.0.0.1", str(port), str(tmp_path / "pw"),
    ]
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    seen = b""
    while b"MANAGEMENT: TCP Socket listening" not in seen:
        chunk = await proc.stdout.receive_some(4096)
        assert chunk, f"openvpn exited: {seen.decode(errors='replace')}"
        seen += chunk
    return proc


async def test_same_bytes_as_openvpn(host: Any, tmp_path: Path) -> None:
    host.holding, host.hold_flag = 0, True
    ours = ManagementConnection(host, password="sekrit")
    mine = bytearray(ours.data_to_send())

    def feed(line: str) -> None:
        ours.receive_data(line.encode() + b"\n", 0.0)
        mine.extend(ours.data_to_send())

    port = free_port()
    with trio.fail_after(30):
        proc = await start_openvpn(tmp_path, port)
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            theirs = bytearray()
            assert await read_until(stream, theirs, b"ENTER PASSWORD:") == bytes(mine)
            mine.clear()
            await stream.send_all(b"wrong\n")
            feed("wrong")
            assert await read_until(stream, theirs, b"ENTER PASSWORD:") == bytes(mine)
            mine.clear()
            await stream.send_all(b"sekrit\r\n")
            feed("sekrit")
            assert await read_until(stream, theirs, b"release:0\r\n") == bytes(mine)
            mine.clear()
            for command in COMMANDS:
                await stream.send_all(command.encode() + b"\npid\n")
                reply = await read_until(stream, theirs, b"SUCCESS: pid=")
                await read_until(stream, theirs, b"\r\n")
                feed(command)
                assert reply.removesuffix(b"SUCCESS: pid=") == bytes(mine), command
                mine.clear()
            await stream.send_all(b"quit\n")
        finally:
            proc.kill()
            await proc.wait()
