"""`networkio.splitter.FrameSplitter` against the reference framer (`networkio.framing`).

Whatever way a stream is cut into receive chunks, the splitter yields the reference
framer's packets (data and control apart, each in stream order), and a bad length prefix
raises the same `FramingError`, after the same chunk, as the reference does.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.networkio.framing import FramingError, TCPFramer, frame_packets
from trivpn.networkio.splitter import FrameSplitter
from trivpn.wire import is_data_byte0

# packets whose first byte is a data opcode (P_DATA_V1 = 6, P_DATA_V2 = 9) or anything else
_first = st.sampled_from([6 << 3, 9 << 3 | 1, 7 << 3, 4 << 3 | 2, 0, 255])
packets = st.lists(
    st.tuples(_first, st.binary(max_size=300)).map(lambda t: bytes([t[0]]) + t[1]),
    max_size=40,
)


def _cuts(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    points = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    chunks, last = [], 0
    for p in [*points, len(stream)]:
        chunks.append(stream[last:p])
        last = p
    return chunks


@st.composite
def chunked(draw: st.DrawFn, corrupt: bool) -> tuple[list[bytes], list[bytes]]:
    pkts = draw(packets)
    stream = frame_packets(pkts)
    if corrupt:
        at = draw(st.integers(0, len(pkts)))
        offset = len(frame_packets(pkts[:at]))
        bad = draw(st.sampled_from([0, 0x3000, 0xFFFF]))  # 0x3000 and up exceed max_frame below
        stream = stream[:offset] + bad.to_bytes(2, "big") + stream[offset:]
    return pkts, _cuts(draw, stream)


def _reference(chunks: list[bytes], max_frame: int) -> tuple[list[list[bytes]], int | None, str]:
    framer = TCPFramer(max_frame)
    out: list[list[bytes]] = []
    for i, c in enumerate(chunks):
        try:
            out.append(framer.feed(c))
        except FramingError as exc:
            return out, i, str(exc)
    return out, None, ""


@settings(max_examples=300, deadline=None)
@given(case=chunked(corrupt=False), capacity=st.integers(1, 700))
def test_any_chunking_gives_the_reference_packets(case: tuple[list[bytes], list[bytes]], capacity: int) -> None:
    pkts, chunks = case
    ref, failed_at, _ = _reference(chunks, 0xFFFF)
    assert failed_at is None
    splitter = FrameSplitter(capacity=capacity)
    for chunk, expected in zip(chunks, ref, strict=True):
        data, other = splitter.feed(chunk)
        assert data == [p for p in expected if is_data_byte0(p[0])]
        assert other == [p for p in expected if not is_data_byte0(p[0])]
    assert splitter.pending == 0
    assert sum(len(x) for x in ref) == len(pkts)


@settings(max_examples=300, deadline=None)
@given(case=chunked(corrupt=True), capacity=st.integers(1, 700))
def test_a_bad_prefix_raises_what_the_reference_raises(case: tuple[list[bytes], list[bytes]], capacity: int) -> None:
    _pkts, chunks = case
    ref, failed_at, message = _reference(chunks, 0x2FFF)
    assert failed_at is not None  # the injected prefix is either 0 or above max_frame
    splitter = FrameSplitter(capacity=capacity, max_frame=0x2FFF)
    for i, chunk in enumerate(chunks):
        if i == failed_at:
            try:
                splitter.feed(chunk)
            except FramingError as exc:
                assert str(exc) == message
            else:
                raise AssertionError("the splitter accepted a chunk the reference refused")
            break
        data, other = splitter.feed(chunk)
        assert data == [p for p in ref[i] if is_data_byte0(p[0])]
        assert other == [p for p in ref[i] if not is_data_byte0(p[0])]
    # once corrupt, the stream stays refused
    try:
        splitter.feed(b"\x00\x05hello")
    except FramingError:
        pass
    else:
        raise AssertionError("a corrupt splitter accepted more bytes")


def test_receive_in_place_keeps_the_tail() -> None:
    """The recv_into path: a frame split across two receives comes out whole."""
    splitter = FrameSplitter(capacity=8)
    wire = frame_packets([bytes([6 << 3]) + b"abcdefghij", b"\x38ctl"])
    space = splitter.space()
    space[:8] = wire[:8]
    assert splitter.commit(8) == ([], [])
    assert splitter.pending == 8
    rest = wire[8:]
    space = splitter.space()
    assert len(space) >= 8
    space[: len(rest)] = rest
    assert splitter.commit(len(rest)) == ([bytes([6 << 3]) + b"abcdefghij"], [b"\x38ctl"])
    assert splitter.pending == 0
