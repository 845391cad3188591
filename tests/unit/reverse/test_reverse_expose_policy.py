"""`expose`'s reconnect policy against hostile or flapping relays (issue 15), over
loopback with a stand-in relay built from the real `Session` core."""

from __future__ import annotations

import struct

import pytest
import trio

from trivpn.errors import FatalError
from trivpn.reverse import events as E
from trivpn.reverse.expose import Expose, ExposeConfig
from trivpn.reverse.frames import ErrorCode, FrameType, encode
from trivpn.reverse.session import Session, SessionConfig

TOKEN = b"0123456789abcdef-token"
HOST = "127.0.0.1"


async def _accept_loop(
    listener: trio.SocketListener, handler: object, counter: list[int], nursery: trio.Nursery
) -> None:
    async with listener:
        for _ in range(50):  # bounded: a runaway reconnect loop ends the test
            conn = await listener.accept()
            counter[0] += 1
            nursery.start_soon(handler, conn)  # type: ignore[arg-type]


async def _fake_relay_replaces_before_proof(conn: trio.SocketStream) -> None:
    """Knows no token: answers HELLO, then claims the client was replaced."""
    async with conn:
        with trio.move_on_after(5):
            await conn.receive_some(4096)  # HELLO
            ack = struct.pack(">32sIII", bytes(32), 65536, 65536, 10_000)
            goaway = struct.pack(">I", ErrorCode.REPLACED) + b"replaced"
            await conn.send_all(encode(FrameType.HELLO_ACK, payload=ack))
            await conn.send_all(encode(FrameType.GOAWAY, payload=goaway))
            await conn.receive_some(4096)


async def _fake_relay_refuses_the_token(conn: trio.SocketStream) -> None:
    """Knows no token: answers HELLO, then AUTH_ERR whatever the client proves."""
    async with conn:
        with trio.move_on_after(5):
            await conn.receive_some(4096)  # HELLO
            ack = struct.pack(">32sIII", bytes(32), 65536, 65536, 10_000)
            await conn.send_all(encode(FrameType.HELLO_ACK, payload=ack))
            await conn.receive_some(4096)  # AUTH
            await conn.send_all(encode(FrameType.AUTH_ERR, payload=b"invalid token"))
            await conn.receive_some(4096)


async def _relay_that_drops_after_bind(conn: trio.SocketStream) -> None:
    """A real relay core that binds port 10000, then drops the connection at once."""
    session = Session("relay", trio.current_time(), SessionConfig(), tokens={"a": TOKEN})
    async with conn:
        with trio.move_on_after(5):
            while not session.closed:
                data = await conn.receive_some(65536)
                if not data:
                    return
                session.receive_data(data, trio.current_time())
                for ev in session.events():
                    if isinstance(ev, E.BindRequested):
                        session.accept_bind(10000, 60)
                out = b"".join(session.data_to_send(trio.current_time()))
                if out:
                    await conn.send_all(out)
                if session.port:
                    return  # bound, then gone


async def _run_expose(port: int, handler: object, **kw: object) -> tuple[str, int]:
    counter = [0]
    cfg = ExposeConfig(
        HOST,
        port,
        HOST,
        9,
        TOKEN,
        backoff_initial=0.01,
        backoff_max=0.02,
        **kw,  # type: ignore[arg-type]
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(port, host=HOST)
            nursery.start_soon(_accept_loop, listeners[0], handler, counter, nursery)
            with pytest.raises(FatalError) as ei:
                await Expose(cfg).run()
            nursery.cancel_scope.cancel()
    return str(ei.value), counter[0]


async def _free_port() -> int:
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    async with listeners[0] as lst:
        return int(lst.socket.getsockname()[1])


async def test_goaway_replaced_from_an_unproven_relay_is_not_final() -> None:
    """Before: a fake relay made expose quit for good on its first connection. Now it is an
    ordinary loss: expose retries until its attempts run out."""
    why, connections = await _run_expose(
        await _free_port(), _fake_relay_replaces_before_proof, attempts=3
    )
    assert "replaced" in why and "gave up after 3 attempts" in why
    assert connections == 4  # figure: 1 + 3 retries, not 1


async def test_session_that_dies_right_after_bind_does_not_reset_the_backoff() -> None:
    """Before: every bound session reset the count (29 reconnects in 30 s with
    --max-attempts 1). Now one that died within `stable_after` counts as a failure."""
    why, connections = await _run_expose(
        await _free_port(), _relay_that_drops_after_bind, attempts=1
    )
    assert "gave up after 1 attempts" in why
    assert connections == 2  # figure: the first try and one retry


async def test_auth_err_from_a_fake_relay_is_retried() -> None:
    """Before: one AUTH_ERR from anything listening at the relay's address ended expose
    for good (1 connection). Now it is retried with backoff until the attempts run out."""
    why, connections = await _run_expose(
        await _free_port(), _fake_relay_refuses_the_token, attempts=3
    )
    assert "rejected the token" in why and "gave up after 3 attempts" in why
    assert connections == 4  # figure: 1 + 3 retries, not 1
