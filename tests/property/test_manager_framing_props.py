"""Properties of the manager protocol's framing, headers and message decoding."""

from __future__ import annotations

import importlib.util
import pathlib
import struct

from hypothesis import given
from hypothesis import strategies as st

from trivpn.errors import RemoteProtocolError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.framing import (
    MAX_HEADER,
    MAX_MESSAGE,
    FrameDecoder,
    HeaderReader,
    Version,
    encode_frame,
    format_header,
    negotiate,
    parse_header,
    parse_versions,
)
from trivpn.manager.rpc import RPCCore, decode_message

_spec = importlib.util.spec_from_file_location(
    "fuzz_manager_frames", pathlib.Path(__file__).parents[2] / "fuzz" / "fuzz_manager_frames.py"
)
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

payloads = st.lists(st.binary(min_size=1, max_size=300), max_size=12)


@st.composite
def version_lists(draw: st.DrawFn) -> tuple[Version, ...]:
    majors = sorted(draw(st.sets(st.integers(1, 50), min_size=1, max_size=6)))
    return tuple(Version(m, draw(st.integers(0, 999))) for m in majors)


@given(payloads, st.lists(st.integers(1, 64), min_size=1, max_size=40))
def test_frames_survive_any_chunking(items: list[bytes], cuts: list[int]) -> None:
    wire = b"".join(encode_frame(p) for p in items)
    d = FrameDecoder()
    got: list[bytes] = []
    pos = i = 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        got += d.feed(wire[pos : pos + step])
        pos += step
        i += 1
    assert got == items
    assert d.error is None and d.buffered == 0


@given(st.binary(max_size=2000), st.integers(1, 200))
def test_decoder_on_arbitrary_bytes_never_invents_or_crashes(data: bytes, step: int) -> None:
    d = FrameDecoder()
    got: list[bytes] = []
    for pos in range(0, len(data), step):
        try:
            got += d.feed(data[pos : pos + step])
        except RemoteProtocolError:
            assert d.error is not None
            break
    assert all(0 < len(p) <= MAX_MESSAGE for p in got)
    assert sum(4 + len(p) for p in got) <= len(data)
    # what came out is exactly a prefix of the input, re-framed
    assert data.startswith(b"".join(encode_frame(p) for p in got))


@given(payloads, st.sampled_from([0, MAX_MESSAGE + 1, 0xFFFFFFFF]))
def test_good_frames_before_a_bad_length_are_kept(items: list[bytes], bad: int) -> None:
    d = FrameDecoder()
    assert d.feed(b"".join(encode_frame(p) for p in items) + struct.pack(">I", bad)) == items
    assert d.error is not None


@given(version_lists(), st.sampled_from(["manager", "tunnel"]))
def test_headers_round_trip(versions: tuple[Version, ...], role: str) -> None:
    line = format_header(role, versions)
    assert len(line) <= MAX_HEADER + 1 and line.endswith(b"\n")
    r = HeaderReader()
    done = [r.feed_byte(b) for b in line]
    assert done[-1] and not any(done[:-1])
    header = parse_header(r.line or b"", role)
    assert header.versions == versions and parse_versions(",".join(map(str, versions))) == versions


@given(version_lists(), version_lists())
def test_negotiation_is_symmetric_and_picks_the_highest_common_major(a: tuple[Version, ...], b: tuple[Version, ...]) -> None:
    common = {v.major for v in a} & {v.major for v in b}
    try:
        va = negotiate(a, b)
    except RemoteProtocolError:
        assert not common
        return
    assert va == negotiate(b, a)
    assert va.major == max(common)
    assert va.minor == min(v.minor for v in (*a, *b) if v.major == va.major)


@given(st.binary(max_size=400))
def test_header_reader_and_parser_raise_only_remote_errors(data: bytes) -> None:
    r = HeaderReader()
    try:
        for b in data:
            if r.feed_byte(b):
                parse_header(r.line or b"", "manager")
                break
    except RemoteProtocolError:
        pass


@given(st.binary(max_size=300), st.sampled_from([pb.ManagerMessage, pb.TunnelMessage]))
def test_decode_message_raises_only_remote_errors(data: bytes, cls: type) -> None:
    try:
        msg = decode_message(data, cls)
    except RemoteProtocolError:
        return
    assert msg.WhichOneof("msg") is not None or msg.rpc.response_to or msg.ByteSize() > msg.rpc.ByteSize()


@given(st.lists(st.sampled_from(["request", "forget", "answer", "stray"]), max_size=60), st.integers(0, 2**64 - 1))
def test_each_request_is_answered_at_most_once(ops: list[str], stray: int) -> None:
    core = RPCCore("manager")
    issued: list[int] = []
    delivered: list[int] = []
    for op in ops:
        if op == "request":
            issued.append(core.new_request(pb.ManagerMessage(get_peer_update={})))
        elif op == "forget" and issued:
            core.forget(issued[0])
        elif op == "answer" and issued:
            ev = core.receive(pb.TunnelMessage(rpc={"response_to": issued[-1]}, peer_update={}))
            if type(ev).__name__ == "Response":
                delivered.append(issued[-1])
        elif op == "stray" and stray:
            core.receive(pb.TunnelMessage(rpc={"response_to": stray}, peer_update={}))
    assert issued == list(range(1, len(issued) + 1))  # our own numbering, from 1
    assert len(delivered) == len(set(delivered))
    assert core.pending <= set(issued)


@st.composite
def hostile_streams(draw: st.DrawFn) -> bytes:
    """A header (good or not), then frames holding real, truncated or random messages."""
    out = draw(st.sampled_from([b"trivpn tunnel 1.0\n", b"trivpn manager 2.0,1.0\n", b"x" * 300, b""]))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 3))
        if kind == 0:
            body = pb.TunnelMessage(
                rpc={"msg_id": draw(st.integers(0, 5)), "response_to": draw(st.integers(0, 5))},
                network_settings={
                    "mtu": draw(st.integers(0, 2**32 - 1)),
                    "ipv4_settings": {
                        "addrs": draw(st.lists(st.sampled_from(["10.0.0.1", "x", "::1"]), max_size=2)),
                        "subnet_masks": draw(st.lists(st.sampled_from(["255.0.0.0", "0.255.0.0", ""]), max_size=2)),
                    },
                },
            ).SerializeToString()
        elif kind == 1:
            body = pb.ManagerMessage(rpc={"msg_id": 1}, start={"profile_text": "x"}).SerializeToString()
        else:
            body = draw(st.binary(max_size=40))
        cut = draw(st.integers(0, len(body)))
        out += struct.pack(">I", len(body)) + (body if kind != 3 else body[:cut])
    return out


@given(st.binary(max_size=300))
def test_fuzz_harness_random_bytes(data: bytes) -> None:
    fuzz.test_one_input(data)


@given(st.integers(0, 255), hostile_streams())
def test_fuzz_harness_hostile_streams(first: int, data: bytes) -> None:
    fuzz.test_one_input(bytes([first]) + data)
