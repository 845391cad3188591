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
