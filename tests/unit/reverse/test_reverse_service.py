"""The reverse tunnel's trio side without the relay/expose programs: `Connection` (plain
TCP, any trio stream, TLS), and two `SessionRunner`s with `StreamPipe`s joined in memory
or over loopback, carrying a stream with a half-close both ways."""

from __future__ import annotations

import socket
import ssl
from collections import deque

import pytest
import trio
import trio.testing
import trustme

from trivpn.errors import FatalError
from trivpn.reverse import connection
from trivpn.reverse.connection import Connection, PlainConnection, StreamConnection
from trivpn.reverse.events import BindRequested, Bound, Event, SessionClosed, StreamOpened
from trivpn.reverse.metrics import Metrics
from trivpn.reverse.pipe import Opener, StreamPipe
from trivpn.reverse.service import SessionRunner
from trivpn.reverse.session import Session
from trivpn.reverse.sockets import Buffers

TOKEN = b"unit-token"


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Both ends of one loopback TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0] as lst:
        port = lst.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await lst.accept()
    return client, server


async def test_plain_connection_sends_without_a_task_and_aborts_with_reset() -> None:
    a, b = await tcp_pair()
    conn = PlainConnection(a)
    assert conn.sync_writes
    bufs: Buffers = deque([b"hello ", b"tunnel"])
    assert conn.send_now(bufs) == 12 and not bufs
    with trio.fail_after(5):
        assert await b.receive_some(100) == b"hello tunnel"
        await b.send_all(b"back")
        assert await conn.receive(False) == b"back"
        await conn.send(deque([b"x" * 100_000]))
        got = 0
        while got < 100_000:
            got += len(await b.receive_some(1 << 20))
    conn.abort()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await b.receive_some(100)  # a TCP reset, not an orderly end of file
    await conn.aclose()
    await b.aclose()


async def test_stream_connection_goes_through_the_writer_only() -> None:
    left, right = trio.testing.memory_stream_pair()
    conn = connection.wrap(left)
    assert isinstance(conn, StreamConnection) and not conn.sync_writes
    bufs: Buffers = deque([b"a", b"b"])
    assert conn.send_now(bufs) == 0 and len(bufs) == 2  # nothing taken without a task
    with trio.fail_after(5):
        await conn.send(bufs)
        assert not bufs
        assert await right.receive_some(10) == b"ab"
        await right.send_all(b"cd")
        assert await conn.receive(False) == b"cd"
    await conn.aclose()


async def test_tls_accept_and_dial_verify_the_dialled_name() -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    accepted: list[Connection] = []
    first = trio.Event()

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with listeners[0] as lst:
            task_status.started()
            for _ in range(2):
                raw = await lst.accept()
                try:
                    accepted.append(await connection.accept(raw, server_ctx))
                    first.set()
                except trio.BrokenResourceError:
                    await raw.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        with trio.fail_after(10):
            tunnel = await connection.dial("127.0.0.1", port, client_ctx, "localhost")
            assert isinstance(tunnel, StreamConnection)
            await tunnel.send(deque([b"over tls"]))
            await first.wait()
            assert await accepted[0].receive(False) == b"over tls"
            tunnel.abort()  # reaches the TCP socket under the TLS stream
            with pytest.raises(trio.BrokenResourceError):
                await accepted[0].receive(False)
            with pytest.raises(FatalError, match="not trusted for 'wrong.name'"):
                await connection.dial("127.0.0.1", port, client_ctx, "wrong.name")
        for c in accepted:
            await c.aclose()


# ------------------------------------------------------------------------ two runners


class RelaySide(SessionRunner):
    def __init__(self, conn: Connection) -> None:
        session = Session("relay", trio.current_time(), tokens={"t": TOKEN})
        super().__init__(session, conn, Metrics(), observe_http=False)
        self.bound = trio.Event()
        self.pipe_done = trio.Event()

    async def tracked_pipe(self, pipe: StreamPipe, opener: Opener) -> None:
        await self.run_pipe(pipe, opener)
        self.pipe_done.set()

    def on_event(self, ev: Event) -> None:
        if isinstance(ev, BindRequested):
            self.session.accept_bind(10000, 60)
            self.bound.set()
            self.flush()


class ClientSide(SessionRunner):
    def __init__(self, conn: Connection, service: Opener) -> None:
        session = Session("client", trio.current_time(), token=TOKEN, client_id=bytes(16))
        super().__init__(session, conn, Metrics(), observe_http=False)
        self.service = service
        self.events: list[Event] = []
        self.pipe_done = trio.Event()

    async def tracked_pipe(self, pipe: StreamPipe, opener: Opener) -> None:
        await self.run_pipe(pipe, opener)
        self.pipe_done.set()

    def on_event(self, ev: Event) -> None:
        self.events.append(ev)
        if isinstance(ev, StreamOpened):
            pipe = StreamPipe(self, ev.stream_id, ev.peer, False, requests_from_socket=False)
            self.pipes[ev.stream_id] = pipe
            assert self.nursery is not None
            self.nursery.start_soon(self.tracked_pipe, pipe, self.service)

    def opened(self, pipe: StreamPipe) -> None:
        self.session.accept_stream(pipe.sid)
        self.flush()


def plain_end() -> tuple[socket.socket, trio.socket.SocketType]:
    """(the pipe's non-blocking socket, the far end as a trio socket)."""
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, trio.socket.from_stdlib_socket(b)


async def read_all(sock: trio.socket.SocketType) -> bytes:
    got = b""
    while data := await sock.recv(65536):
        got += data
    return got


@pytest.mark.parametrize("transport", ["loopback-tcp", "memory-stream"])
async def test_runners_carry_a_half_closed_stream(transport: str) -> None:
    if transport == "loopback-tcp":
        a, b = await tcp_pair()
        relay_conn, client_conn = connection.wrap(a), connection.wrap(b)
    else:
        left, right = trio.testing.memory_stream_pair()
        relay_conn, client_conn = connection.wrap(left), connection.wrap(right)
    public, public_far = plain_end()
    local, local_far = plain_end()

    async def open_local() -> socket.socket:
        return local

    async def open_public() -> socket.socket:
        return public

    relay = RelaySide(relay_conn)
    client = ClientSide(client_conn, open_local)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.run)
            nursery.start_soon(client.run)
            await relay.bound.wait()
            sid = relay.session.open_stream("203.0.113.5:1234", trio.current_time())
            pipe = StreamPipe(relay, sid, "203.0.113.5:1234", False, requests_from_socket=True)
            relay.pipes[sid] = pipe
            relay.flush()
            nursery.start_soon(relay.tracked_pipe, pipe, open_public)
            await public_far.send(b"request" * 1000)
            public_far.shutdown(socket.SHUT_WR)  # FIN from the public client
            assert await read_all(local_far) == b"request" * 1000  # ... reaches the service
            await local_far.send(b"reply after the client's FIN")
            local_far.shutdown(socket.SHUT_WR)
            assert await read_all(public_far) == b"reply after the client's FIN"
            await relay.pipe_done.wait()  # both pipes end once both directions ended
            await client.pipe_done.wait()
            assert not relay.pipes and not client.pipes
            assert relay.session.stream_count == 0 and client.session.stream_count == 0
            relay.session.close("test over")
            relay.flush()
        assert Bound(10000, 60) in client.events
        assert client.closed_event is not None and client.closed_event.by_peer
        assert isinstance(relay.closed_event, SessionClosed)
    public_far.close()
    local_far.close()
