from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivpn.errors import RemoteProtocolError
from trivpn.networkio.framing import TCPFramer, frame_packets

packets = st.lists(st.binary(min_size=1, max_size=300), max_size=20)


def test_frame_layout() -> None:
    assert frame_packets([b"\x38abc"]) == b"\x00\x04\x38abc"


@given(packets, st.data())
def test_any_split_gives_the_same_packets(pkts: list[bytes], data: st.DataObject) -> None:
    stream = frame_packets(pkts)
    framer = TCPFramer()
    got: list[bytes] = []
    pos = 0
    while pos < len(stream):
        n = data.draw(st.integers(1, max(1, len(stream) - pos)))
        got.extend(framer.feed(stream[pos : pos + n]))
        pos += n
    assert got == pkts
    assert framer.pending == 0


def test_byte_by_byte_equals_all_at_once() -> None:
    pkts = [bytes([i]) * (i + 1) for i in range(1, 40)]
    stream = frame_packets(pkts)
    a = TCPFramer().feed(stream)
    f = TCPFramer()
    b = [p for i in range(len(stream)) for p in f.feed(stream[i : i + 1])]
    assert a == b == pkts


def test_zero_length_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError):
        TCPFramer().feed(b"\x00\x00\x01")


@given(st.binary(max_size=200))
def test_garbage_parses_or_raises_remote_error(blob: bytes) -> None:
    try:
        for p in TCPFramer().feed(blob):
            assert p
    except RemoteProtocolError:
        pass


def test_cannot_frame_empty_or_huge() -> None:
    with pytest.raises(ValueError):
        frame_packets([b""])
    with pytest.raises(ValueError):
        frame_packets([b"x" * 70000])


async def test_injected_zero_length_ends_the_tcp_transport_with_a_restart() -> None:
    """`00 00` injected into the stream: the transport reports a corrupt stream, which is a
    `TransportError` (so a `SessionRestart`: the client reconnects, it never exits)."""
    import socket

    from trivpn.errors import SessionRestart
    from trivpn.networkio.framing import FramingError
    from trivpn.networkio.transport import Endpoint, StreamCorrupted, TCPTransport, TransportError

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ep = Endpoint("127.0.0.1", 1194, "tcp", socket.AF_INET, ("127.0.0.1", 1194))
    transport = TCPTransport(ours, ep)
    try:
        theirs.sendall(frame_packets([b"\x38first"]))
        assert await transport.recv_batch() == [b"\x38first"]
        theirs.sendall(b"\x00\x00" + frame_packets([b"\x38lost"]))
        with pytest.raises(StreamCorrupted) as info:
            await transport.recv_batch()
        assert isinstance(info.value, TransportError) and isinstance(info.value, SessionRestart)
        assert "invalid TCP frame length 0" in str(info.value) and "127.0.0.1:1194" in str(info.value)
        with pytest.raises(FramingError):
            TCPFramer().feed(b"\x00\x00")
    finally:
        transport.close()
        theirs.close()


def test_server_frame_limit_follows_the_session_state() -> None:
    """Before the data keys: the largest control packet (2048 + a 1024-byte WKc = 3072);
    after: also a data packet of tun-mtu plus 256 (9256 for tun-mtu 9000), never above 65535."""
    from trivpn.networkio.framing import server_frame_limit

    assert server_frame_limit(False, 9000) == 3072
    assert server_frame_limit(True, 1500) == 3072 and server_frame_limit(True, 9000) == 9256
    assert server_frame_limit(True, 65535) == 65535


async def test_a_server_tcp_stream_announcing_65535_bytes_ends_at_once() -> None:
    """A server session's transport with the state's limit: a 65535 length before the
    keys fails on its two prefix bytes (OpenVPN: "Bad encapsulated packet length", the
    connection closed at once). Before, up to 64 kB were read until the hand window ended."""
    import socket

    from trivpn.networkio.framing import server_frame_limit
    from trivpn.networkio.transport import Endpoint, StreamCorrupted, TCPTransport

    keyed = [False]
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ep = Endpoint("127.0.0.1", 40000, "tcp", socket.AF_INET, ("127.0.0.1", 40000))
    transport = TCPTransport(ours, ep, lambda: server_frame_limit(keyed[0], 9000))
    try:
        theirs.sendall(frame_packets([b"\x38" * 3072]))
        assert await transport.recv_batch() == [b"\x38" * 3072]
        keyed[0] = True
        theirs.sendall(frame_packets([b"\x48" * 9256]))
        assert await transport.recv_batch() == [b"\x48" * 9256]
        keyed[0] = False
        theirs.sendall(b"\xff\xff")
        with pytest.raises(StreamCorrupted, match="invalid TCP frame length 65535"):
            await transport.recv_batch()
    finally:
        transport.close()
        theirs.close()
