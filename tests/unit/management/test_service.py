"""The management service over real loopback TCP and unix sockets, with a fake host."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trivpn.management import formats as f
from trivpn.management.config import ManagementConfigError, read_password_file
from trivpn.management.core import Notification
from trivpn.management.service import ManagementService

BANNER = b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"


async def read_until(stream: trio.abc.Stream, suffix: bytes, limit: int = 1 << 20) -> bytes:
    data = b""
    while not data.endswith(suffix):
        chunk = await stream.receive_some(65536)
        assert chunk, f"EOF before {suffix!r}; got {data[-200:]!r}"
        data += chunk
        assert len(data) < limit
    return data


async def start_tcp(nursery: trio.Nursery, service: ManagementService) -> int:
    listeners = await nursery.start(service.serve_tcp, 0)
    return int(listeners[0].socket.getsockname()[1])


async def test_tcp_session(host: Any) -> None:
    service = ManagementService(host)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_tcp(nursery, service)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            assert await read_until(stream, b"\r\n") == BANNER
            await stream.send_all(b"pid\r\nstate on\r\n")
            await read_until(stream, b"set to ON\r\n")
            service.broadcast([Notification.state(f.StateRecord(7, "CONNECTED", "SUCCESS"))])
            assert await read_until(stream, b"\r\n") == b">STATE:7,CONNECTED,SUCCESS,,,,,\r\n"
            await stream.send_all(b"bytecount 1\n")
            out = await read_until(stream, b">BYTECOUNT:0,28\r\n")
            assert out.startswith(b"SUCCESS: bytecount interval changed\r\n")
            await stream.send_all(b"bogus\nquit\n")
            assert await read_until(stream, b"options\r\n") == (
                b"ERROR: unknown command, enter 'help' for more options\r\n"
            )
            assert await stream.receive_some(100) == b""  # closed after quit
            nursery.cancel_scope.cancel()


async def test_password_over_tcp(host: Any, tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("sekrit\nignored second line\n")
    service = ManagementService(host, password=read_password_file(tmp_path / "pw"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_tcp(nursery, service)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            assert await read_until(stream, b"ENTER PASSWORD:") == b"ENTER PASSWORD:"
            await stream.send_all(b"nope\n")
            assert await read_until(stream, b"ENTER PASSWORD:") == b"ENTER PASSWORD:"
            await stream.send_all(b"sekrit\r\npid\n")
            out = await read_until(stream, b"pid=4242\r\n")
            assert out == b"SUCCESS: password is correct\r\n" + BANNER + b"SUCCESS: pid=4242\r\n"
            nursery.cancel_scope.cancel()


async def test_non_loopback_needs_a_password(host: Any) -> None:
    with pytest.raises(ManagementConfigError, match="non-loopback address 0.0.0.0 needs a password"):
        await ManagementService(host).serve_tcp(0, "0.0.0.0")


def test_empty_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("")
    with pytest.raises(ManagementConfigError, match="is empty"):
        read_password_file(tmp_path / "pw")


async def test_unix_socket(host: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "mgmt.sock")
    service = ManagementService(host)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.serve_unix, path)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            stream = await trio.open_unix_socket(path)
            assert await read_until(stream, b"\r\n") == BANNER
            await stream.send_all(b"version\n")
            out = await read_until(stream, b"END\r\n")
            assert out.endswith(b"Management Version: 5\r\nEND\r\n")
            await stream.aclose()
            nursery.cancel_scope.cancel()
    assert not _exists(path)


async def test_a_client_that_never_reads_is_dropped(host: Any) -> None:
    """Only the client that stops reading is dropped; one that reads keeps its connection.

    The healthy client drains its socket in its own task, so it never falls behind however
    small the kernel keeps loopback buffers (under TCP memory pressure earlier tests can leave
    behind, a client that read once per broadcast fell behind and was dropped, too).
    """
    service = ManagementService(host, queue_size=4)
    big = Notification.always(">LOG:1,I," + "z" * 200_000)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await start_tcp(nursery, service)
            stuck = await trio.open_tcp_stream("127.0.0.1", port)  # never reads
            healthy = await trio.open_tcp_stream("127.0.0.1", port)
            await read_until(healthy, b"\r\n")
            received = bytearray()
            answered = trio.Event()

            async def drain() -> None:
                while not received.endswith(b"pid=4242\r\n"):
                    chunk = await healthy.receive_some(1 << 20)
                    assert chunk, "the healthy client was disconnected"
                    received.extend(chunk)
                    del received[: max(0, len(received) - 64)]  # keep only the tail
                answered.set()

            nursery.start_soon(drain)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(500):  # bounded: at most 100 MB offered
                service.broadcast([big])
                await trio.testing.wait_all_tasks_blocked()
                if service.slow_dropped:
                    break
            assert service.slow_dropped == 1
            await healthy.send_all(b"pid\n")
            await answered.wait()
            assert received.endswith(b"SUCCESS: pid=4242\r\n")
            await stuck.aclose()
            nursery.cancel_scope.cancel()


async def test_a_failing_host_call_closes_only_that_connection(host: Any) -> None:
    def broken() -> int:
        raise RuntimeError("host bug")

    service = ManagementService(host)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_tcp(nursery, service)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await read_until(stream, b"\r\n")
            host.pid = broken
            await stream.send_all(b"pid\n")
            assert await stream.receive_some(100) == b""
            assert service.failed == 1
            del host.pid
            again = await trio.open_tcp_stream("127.0.0.1", port)
            await read_until(again, b"\r\n")
            await again.send_all(b"pid\n")
            assert await read_until(again, b"\r\n") == b"SUCCESS: pid=4242\r\n"
            nursery.cancel_scope.cancel()


async def test_connections_over_the_limit_are_refused(host: Any) -> None:
    service = ManagementService(host, max_connections=1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_tcp(nursery, service)
            first = await trio.open_tcp_stream("127.0.0.1", port)
            await read_until(first, b"\r\n")
            second = await trio.open_tcp_stream("127.0.0.1", port)
            assert await second.receive_some(100) == b""
            assert service.refused == 1
            nursery.cancel_scope.cancel()


def _exists(path: str) -> bool:
    return os.path.exists(path)


async def test_a_peer_that_hangs_up_is_not_a_failure(host: Any) -> None:
    service = ManagementService(host)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start_tcp(nursery, service)
            for _ in range(3):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await read_until(stream, b"\r\n")
                await stream.send_all(b"help\n")  # reply pending while the peer goes away
                await stream.aclose()
            last = await trio.open_tcp_stream("127.0.0.1", port)
            await read_until(last, b"\r\n")
            await last.send_all(b"pid\n")
            assert await read_until(last, b"\r\n") == b"SUCCESS: pid=4242\r\n"
            assert service.failed == 0
            nursery.cancel_scope.cancel()
