"""A stream cut before both FINs (the program stops mid-transfer) resets its sockets: the
peer sees ECONNRESET, never the clean end of file that would pass a cut-off download or
upload as complete."""

from __future__ import annotations

import socket

import trio

from tests.unit.reverse.test_reverse_service import ClientSide, RelaySide, tcp_pair
from trivpn.reverse import connection
from trivpn.reverse.pipe import StreamPipe

CHUNK = 64 * 1024


def tcp_ends() -> tuple[socket.socket, socket.socket]:
    """(the pipe's non-blocking end, the far end, blocking) of one loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as lst:
        far = socket.create_connection(lst.getsockname())
        near, _ = lst.accept()
    near.setblocking(False)
    return near, far


def drain_until_end(sock: socket.socket, limit: int) -> tuple[int, str]:
    """Read until EOF or an error (bounded in bytes); (bytes read, 'eof' or the error)."""
    sock.settimeout(5)
    got = 0
    while got < limit:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            return got, "reset"
        except OSError as exc:
            return got, repr(exc)
        if not data:
            return got, "eof"
        got += len(data)
    return got, "limit"


async def test_cancelled_transfer_resets_both_sockets() -> None:
    """A download (service -> public) and an upload (public -> service) under way when
    both programs' nurseries are cancelled: the public client and the service each get
    ECONNRESET after the partial transfer, not EOF."""
    a, b = await tcp_pair()
    public, public_far = tcp_ends()
    local, local_far = tcp_ends()

    async def open_local() -> socket.socket:
        return local

    async def open_public() -> socket.socket:
        return public

    relay = RelaySide(connection.wrap(a))
    client = ClientSide(connection.wrap(b), open_local)
    up = down = 0
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.run)
            nursery.start_soon(client.run)
            await relay.bound.wait()
            sid = relay.session.open_stream("127.0.0.1:1234", trio.current_time())
            pipe = StreamPipe(relay, sid, "127.0.0.1:1234", False, requests_from_socket=True)
            relay.pipes[sid] = pipe
            relay.flush()
            assert relay.nursery is not None  # the pipe runs in its session's nursery, as
            relay.nursery.start_soon(relay.tracked_pipe, pipe, open_public)  # relay.adopt does
            public_far.settimeout(5)
            local_far.settimeout(5)
            # 1 MiB each way with no length to tell the end by, then the stop
            await trio.to_thread.run_sync(public_far.sendall, b"u" * (1 << 20))
            await trio.to_thread.run_sync(local_far.sendall, b"d" * (1 << 20))
            while up < 1 << 20:
                up += len(await trio.to_thread.run_sync(local_far.recv, 1 << 20))
            while down < 1 << 20:
                down += len(await trio.to_thread.run_sync(public_far.recv, 1 << 20))
            nursery.cancel_scope.cancel()  # what SIGTERM does to both programs
    public_end = drain_until_end(public_far, 1 << 30)
    local_end = drain_until_end(local_far, 1 << 30)
    public_far.close()
    local_far.close()
    assert (up, down) == (1 << 20, 1 << 20)  # figure: 1 MiB each way before the stop
    assert public_end == (0, "reset")  # before: (0, "eof"), a download that looked complete
    assert local_end == (0, "reset")  # before: (0, "eof"), an upload that looked complete
