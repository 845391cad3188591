"""Several tunnels over one expose connection (protocol 2 of the reverse tunnel): the
negotiation, the BIND / BIND_OK lists, OPEN's binding index, and compatibility with
protocol-1 peers."""

from __future__ import annotations

import functools
import struct

import pytest
import trio
from helpers.reverse import HOST, free_port

from trivpn.errors import FatalError, LocalProtocolError, RemoteProtocolError
from trivpn.reverse import session as S
from trivpn.reverse.bindings import decode_bindings, encode_bindings
from trivpn.reverse.events import Binding
from trivpn.reverse.expose import Expose, ExposeConfig, TunnelConfig
from trivpn.reverse.frames import FrameType, encode
from trivpn.reverse.relay import Relay, RelayConfig
from trivpn.reverse.session import Session

TOKEN = b"0123456789abcdef-token"
CID = bytes(range(16))


def pump(a: Session, b: Session, rounds: int = 10) -> tuple[list[S.Event], list[S.Event]]:
    ea: list[S.Event] = []
    eb: list[S.Event] = []
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            out = b"".join(src.data_to_send(0.0))
            if out:
                moved = True
                dst.receive_data(out, 0.0)
        ea += a.events()
        eb += b.events()
        if not moved:
            break
    return ea, eb


def pair(bindings: tuple[Binding, ...] | None) -> tuple[Session, Session]:
    relay = Session("relay", 0.0, tokens={"alice": TOKEN})
    client = Session("client", 0.0, token=TOKEN, client_id=CID, bindings=bindings)
    return relay, client


def test_three_bindings_negotiate_protocol_2_and_bind_in_order() -> None:
    binds = (Binding(0, "web"), Binding(10022, "ssh"), Binding(0))
    relay, client = pair(binds)
    er, _ = pump(relay, client)
    req = [e for e in er if isinstance(e, S.BindRequested)]
    assert req and req[0].bindings == binds and relay.protocol == client.protocol == 2
    relay.accept_binds([10000, 10022, 10001], 60)
    _, ec = pump(relay, client)
    bound = [e for e in ec if isinstance(e, S.Bound)][0]
    assert bound.ports == (10000, 10022, 10001) and client.ports == bound.ports
    # a connection on the third port is opened with its binding index
    sid = relay.open_stream("198.51.100.7:5000", 0.0, binding=2)
    _, ec = pump(relay, client)
    assert S.StreamOpened(sid, "198.51.100.7:5000", 2) in ec
    with pytest.raises(LocalProtocolError, match="no binding 3"):
        relay.open_stream("x", 0.0, binding=3)


def test_one_unnamed_binding_stays_protocol_1() -> None:
    relay, client = pair(None)
    er, _ = pump(relay, client)
    assert relay.protocol == client.protocol == 1
    assert S.BindRequested(0) in er
    relay.accept_bind(10000, 60)
    _, ec = pump(relay, client)
    assert S.Bound(10000, 60) in ec and client.ports == (10000,)
    sid = relay.open_stream("198.51.100.7:5000", 0.0)
    _, ec = pump(relay, client)
    assert S.StreamOpened(sid, "198.51.100.7:5000", 0) in ec  # no index byte on the wire


def test_accept_binds_needs_one_port_per_binding() -> None:
    relay, client = pair((Binding(0, "a"), Binding(0, "b")))
    pump(relay, client)
    with pytest.raises(LocalProtocolError, match="1 ports for 2 bindings"):
        relay.accept_binds([10000], 60)


def test_bindings_codec_roundtrip_and_hostile_payloads() -> None:
    binds = (Binding(1, "a"), Binding(65535, "x" * 63), Binding(0))
    assert decode_bindings(encode_bindings(binds)) == binds
    for bad, why in [
        (b"", "1 to 16"),
        (b"\x00", "1 to 16"),
        (b"\x11" + b"\x00\x00\x00" * 17, "1 to 16"),
        (b"\x01\x00", "cut short"),
        (b"\x01\x00\x00\x05ab", "cut short"),
        (b"\x01\x00\x00\x00!", "trailing"),
        (b"\x01\x00\x00\x02A!", "lowercase"),
    ]:
        with pytest.raises(RemoteProtocolError, match=why):
            decode_bindings(bad)


def test_client_refuses_bad_bindings_before_sending() -> None:
    with pytest.raises(LocalProtocolError, match="lowercase"):
        pair((Binding(0, "Web"),))
    with pytest.raises(LocalProtocolError, match="1 to 16"):
        pair(tuple(Binding(0) for _ in range(17)))


def test_extended_hello_must_offer_protocol_2_or_more() -> None:
    relay = Session("relay", 0.0, tokens={"alice": TOKEN})
    hello = struct.pack("!16s16sIIH", bytes(16), CID, 65536, 65536, 1)
    with pytest.raises(RemoteProtocolError, match="protocol 1"):
        relay.receive_data(encode(FrameType.HELLO, payload=hello), 0.0)


def test_extended_ack_to_a_plain_hello_is_a_protocol_error() -> None:
    client = Session("client", 0.0, token=TOKEN, client_id=CID)
    client.data_to_send(0.0)
    ack = struct.pack("!32sIIIH", bytes(32), 65536, 65536, 10_000, 2)
    with pytest.raises(RemoteProtocolError, match="does not match"):
        client.receive_data(encode(FrameType.HELLO_ACK, payload=ack), 0.0)


def test_big_bind_passes_once_authenticated_only() -> None:
    """16 bindings with long names exceed the 256-byte pre-auth limit: allowed only after
    the token was proved."""
    binds = tuple(Binding(0, f"{i:02d}" + "n" * 61) for i in range(16))
    assert len(encode_bindings(binds)) > 256
    relay, client = pair(binds)
    er, _ = pump(relay, client)
    assert [e for e in er if isinstance(e, S.BindRequested)][0].bindings == binds
    # before authentication the same frame is refused by size
    stranger = Session("relay", 0.0, tokens={"alice": TOKEN})
    with pytest.raises(RemoteProtocolError, match="exceeds the limit of 256"):
        stranger.receive_data(encode(FrameType.BIND, payload=encode_bindings(binds)), 0.0)


async def _echo(tag: bytes, stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(tag + data)


async def test_two_tunnels_over_one_expose_connection() -> None:
    start = free_port()
    relay = Relay(
        RelayConfig(
            host=HOST, port=0, start_port=start, end_port=start + 9, tokens={"alice": TOKEN}
        )
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            locals_ = []
            for tag in (b"A:", b"B:"):
                handler = functools.partial(_echo, tag)
                lst = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host=HOST))
                locals_.append(lst[0].socket.getsockname()[1])
            tport = await nursery.start(relay.serve)
            ready = trio.Event()
            public: list[int] = []

            def on_bound(host: str, port: int) -> None:
                public.append(port)
                if len(public) == 2:
                    ready.set()

            tunnels = [
                TunnelConfig(HOST, locals_[0], label="alpha"),
                TunnelConfig(HOST, locals_[1], remote_port=start + 5, label="beta"),
            ]
            expose = Expose(ExposeConfig(HOST, tport, "", 0, TOKEN, tunnels=tunnels), on_bound)
            nursery.start_soon(expose.run)
            await ready.wait()
            assert public == [start, start + 5]
            assert len(relay.by_owner) == 1  # one session carries both
            for port, tag in zip(public, (b"A:", b"B:"), strict=True):
                stream = await trio.open_tcp_stream(HOST, port)
                async with stream:
                    await stream.send_all(b"hello")
                    assert await stream.receive_some(100) == tag + b"hello"
            nursery.cancel_scope.cancel()


async def test_a_refused_binding_refuses_the_bind_and_names_it() -> None:
    start = free_port()
    relay = Relay(
        RelayConfig(
            host=HOST, port=0, start_port=start, end_port=start + 9, tokens={"alice": TOKEN}
        )
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            tport = await nursery.start(relay.serve)
            tunnels = [
                TunnelConfig(HOST, 1, label="ok"),
                TunnelConfig(HOST, 1, remote_port=start + 20, label="far"),
            ]
            expose = Expose(ExposeConfig(HOST, tport, "", 0, TOKEN, tunnels=tunnels))
            with pytest.raises(FatalError, match=r"tunnel far: port \d+ is outside"):
                await expose.run()
            assert relay.allocator.held("alice", trio.current_time()) == []  # nothing kept
            nursery.cancel_scope.cancel()


async def _protocol_1_relay(conn: trio.SocketStream) -> None:
    """What a relay of protocol 1 answers to the 42-byte HELLO: GOAWAY(protocol)."""
    async with conn:
        with trio.move_on_after(5):
            await conn.receive_some(4096)
            goaway = struct.pack(">I", 1) + b"HELLO frame of 42 bytes, expected 40"
            await conn.send_all(encode(FrameType.GOAWAY, payload=goaway))
            await conn.receive_some(4096)


async def test_expose_explains_a_protocol_1_relay_and_does_not_retry() -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            lst = await nursery.start(
                functools.partial(trio.serve_tcp, _protocol_1_relay, 0, host=HOST)
            )
            tport = lst[0].socket.getsockname()[1]
            tunnels = [TunnelConfig(HOST, 1, label="a"), TunnelConfig(HOST, 2, label="b")]
            expose = Expose(ExposeConfig(HOST, tport, "", 0, TOKEN, tunnels=tunnels))
            with pytest.raises(FatalError, match="speaks only protocol 1"):
                await expose.run()
            nursery.cancel_scope.cancel()


async def test_two_tunnels_get_both_ports_back_after_a_drop() -> None:
    start = free_port()
    relay = Relay(
        RelayConfig(
            host=HOST, port=0, start_port=start, end_port=start + 9, tokens={"alice": TOKEN}
        )
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            tport = await nursery.start(relay.serve)
            bound: list[int] = []
            tunnels = [TunnelConfig(HOST, 1, label="a"), TunnelConfig(HOST, 2, label="b")]
            cfg = ExposeConfig(HOST, tport, "", 0, TOKEN, tunnels=tunnels, backoff_initial=0.05)
            expose = Expose(cfg, lambda h, p: bound.append(p))
            nursery.start_soon(expose.run)
            for _ in range(1000):  # bounded wait for the first bind
                if len(bound) == 2:
                    break
                await trio.sleep(0.01)
            relay.by_owner[("alice", expose.client_id)].drop()
            # another client of the same token binds meanwhile: our ports are not its
            other, _ = relay.allocator.assign(("alice", bytes(16)), 0, trio.current_time())
            assert other not in bound
            for _ in range(1000):
                if len(bound) == 4:
                    break
                await trio.sleep(0.01)
            assert bound[2:] == bound[:2] and expose.sessions == 2
            held = relay.allocator.held("alice", trio.current_time())
            assert held == sorted([*bound[:2], other])
            nursery.cancel_scope.cancel()
