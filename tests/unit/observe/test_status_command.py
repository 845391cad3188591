"""`trivpn status` mistakes are one line: a bad --timeout or port is a usage error (exit 2),
a password file that cannot serve or a wrong password says so (exit 1). Before, they were
`internal error: ValueError/UnicodeDecodeError/ManagementConfigError`, a refused connect to
port 99999, or a wrong password reported as "the management interface closed the
connection" (our commands were taken for more password attempts)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trivpn.errors import ConfigError, TrivpnError
from trivpn.observe.client import ClientMonitor
from trivpn.observe.serving import ManagementSpec, start_management
from trivpn.observe.statuscmd import query_figures

ROOT = Path(__file__).resolve().parents[3]
BOUND = 10


def _status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trivpn", "status", *args], capture_output=True, text=True, timeout=60,
        check=False, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("value", ["-1", "nan", "0", "inf"])
def test_bad_timeout_is_a_usage_error(tmp_path: Path, value: str) -> None:
    result = _status(str(tmp_path / "x.sock"), "--timeout", value)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("trivpn status: error: argument --timeout: must be a positive number")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("where", ["127.0.0.1:99999", "[::1]:0", "127.0.0.1:65536"])
def test_out_of_range_port_is_a_usage_error(where: str) -> None:
    result = _status(where)
    assert result.returncode == 2, result.stderr
    assert "is out of range (1-65535)" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(("content", "says"), [
    (b"\xff\xfe\x00\x01binary", "is not UTF-8 text"),
    (b"", "is empty"),
    (b"x" * 10000, "the first line is too long"),
])
def test_unusable_password_file_is_one_line(tmp_path: Path, content: bytes, says: str) -> None:
    (tmp_path / "pw").write_bytes(content)
    result = _status(str(tmp_path / "x.sock"), "--password-file", str(tmp_path / "pw"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("trivpn: error: --password-file: ") and says in result.stderr
    assert "internal error" not in result.stderr and len(result.stderr.splitlines()) == 1


async def test_wrong_password_is_named(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("sekrit\n")
    sock = str(tmp_path / "m.sock")
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await start_management(nursery, ClientMonitor(), ManagementSpec(sock, None, str(tmp_path / "pw")))
            with pytest.raises(TrivpnError, match="^wrong management password$"):
                await query_figures(sock, "guess")
            assert (await query_figures(sock, "sekrit"))["role"] == "client"
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("answer", [b"ERROR: bad password\r\n", b"", b">INFO:x\r\nERROR: bad password\r\nENTER PASSWORD:"])
async def test_wrong_password_as_openvpn_answers_it(tmp_path: Path, answer: bytes) -> None:
    """OpenVPN says `ERROR: bad password` (then prompts again, or closes after the last try)."""
    sock = str(tmp_path / "m.sock")

    async def fake(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"ENTER PASSWORD:")
        await stream.receive_some(100)
        if answer:
            await stream.send_all(answer)
        await stream.aclose()

    with trio.fail_after(BOUND):
        raw = trio.socket.socket(trio.socket.AF_UNIX)
        await raw.bind(sock)
        raw.listen(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, fake, [trio.SocketListener(raw)])
            with pytest.raises(TrivpnError, match="^wrong management password$"):
                await query_figures(sock, "guess")
            nursery.cancel_scope.cancel()


async def test_server_binary_password_file_is_one_line(tmp_path: Path) -> None:
    """`management … PWFILE` with a binary file: a ConfigError at start-up, not a traceback."""
    (tmp_path / "pw").write_bytes(b"\xff\xfe\x00")
    async with trio.open_nursery() as nursery:
        with pytest.raises(ConfigError, match="is not UTF-8 text"):
            await start_management(nursery, ClientMonitor(), ManagementSpec("127.0.0.1", 0, str(tmp_path / "pw")))
