"""The pure core of the manager protocol: headers, version lists, frames, RPC matching."""

from __future__ import annotations

import struct

import pytest

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.framing import (
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
from trivpn.manager.rpc import Notice, Request, Response, RPCCore, UnknownResponse, decode_message


def test_header_bytes_are_exact() -> None:
    assert format_header("tunnel", (Version(1, 0),)) == b"trivpn tunnel 1.0\n"
    assert format_header("manager", (Version(1, 3), Version(2, 1))) == b"trivpn manager 1.3,2.1\n"


@pytest.mark.parametrize(
    ("text", "versions"),
    [("1.0", [(1, 0)]), ("1.1,2.3,3.2", [(1, 1), (2, 3), (3, 2)]), ("7.12", [(7, 12)])],
)
def test_valid_version_lists_round_trip(text: str, versions: list[tuple[int, int]]) -> None:
    parsed = parse_versions(text)
    assert parsed == tuple(Version(*v) for v in versions)
    assert ",".join(str(v) for v in parsed) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1.0,1.2", "duplicate major"),
        ("1.0,1.1", "duplicate major"),
        ("2.0,1.0", "not sorted"),
        ("0.1", "major version 0"),
        ("1", "major.minor"),
        ("1.0.0", "major.minor"),
        ("a.b", "major.minor"),
        ("1.-1", "major.minor"),
        ("+1.0", "major.minor"),
        ("01.0", "major.minor"),
        ("", "major.minor"),
        ("1.0,", "major.minor"),
    ],
)
def test_invalid_version_lists(text: str, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        parse_versions(text)


def test_negotiation_takes_highest_common_major_and_lower_minor() -> None:
    ours = (Version(1, 3), Version(2, 1))
    assert negotiate(ours, parse_versions("1.1,2.4")) == Version(2, 1)
    assert negotiate(ours, parse_versions("1.9")) == Version(1, 3)
    assert negotiate(ours, parse_versions("1.0,3.0")) == Version(1, 0)
    with pytest.raises(RemoteProtocolError, match="not compatible"):
        negotiate((Version(1, 0),), parse_versions("2.0,3.0"))


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"codervpn manager 1.0", "preamble"),
        (b"trivpn tunnel 1.0", "wrong role"),
        (b"trivpn client 1.0", "wrong role"),
        (b"trivpn 1.0 manager", "wrong role"),  # the old order
        (b"trivpn manager", "3 space-separated"),
        (b"trivpn manager 1.0 extra", "3 space-separated"),
        (b"trivpn  manager 1.0", "3 space-separated"),
        (b"trivpn manager 2.0,1.0", "not sorted"),
        (b"trivpn manager 1.0,1.2", "duplicate major"),
        (b"trivpn manager 0.1", "major version 0"),
        (b"trivpn manager \xff.0", "ASCII"),
    ],
)
def test_bad_headers(line: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        parse_header(line, "manager")


def test_header_reader_stops_at_newline_and_bounds_length() -> None:
    r = HeaderReader()
    for b in b"trivpn manager 1.0":
        assert r.feed_byte(b) is False
    assert r.feed_byte(0x0A) is True
    assert r.line == b"trivpn manager 1.0"
    with pytest.raises(LocalProtocolError):
        r.feed_byte(0x41)
    long = HeaderReader()
    for _ in range(255):
        long.feed_byte(0x41)
    assert long.feed_byte(0x0A) is True  # 255 bytes + LF is the largest header
    over = HeaderReader()
    for _ in range(255):
        over.feed_byte(0x41)
    with pytest.raises(RemoteProtocolError, match="too large"):
        over.feed_byte(0x41)


def test_we_refuse_to_write_headers_the_peer_must_reject() -> None:
    with pytest.raises(LocalProtocolError):
        format_header("client", (Version(1, 0),))
    with pytest.raises(LocalProtocolError):
        format_header("tunnel", (Version(2, 0), Version(1, 0)))
    with pytest.raises(LocalProtocolError):
        format_header("tunnel", tuple(Version(i, 123456789) for i in range(1, 40)))


def test_frames_split_anywhere_decode_in_order() -> None:
    payloads = [b"a", b"bc" * 100, b"\x00" * 3]
    wire = b"".join(encode_frame(p) for p in payloads)
    d = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(wire)):
        got += d.feed(wire[i : i + 1])
    assert got == payloads and d.error is None and d.buffered == 0


@pytest.mark.parametrize(
    ("length", "why"), [(0, "zero-length"), (MAX_MESSAGE + 1, "exceeds"), (0xFFFFFFFF, "exceeds")]
)
def test_bad_lengths_break_the_decoder_but_keep_earlier_frames(length: int, why: str) -> None:
    d = FrameDecoder()
    good = encode_frame(b"ok")
    assert d.feed(good + struct.pack(">I", length) + b"junk") == [b"ok"]
    assert d.error is not None and why in d.error
    with pytest.raises(RemoteProtocolError, match=why):
        d.feed(good)


def test_max_message_is_accepted_by_length() -> None:
    d = FrameDecoder()
    assert d.feed(struct.pack(">I", MAX_MESSAGE)) == []
    assert d.error is None


def test_encode_frame_refuses_empty_and_oversized() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(b"")
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * (MAX_MESSAGE + 1))


def test_decode_message_rejects_corrupt_and_empty() -> None:
    with pytest.raises(RemoteProtocolError, match="corrupt"):
        decode_message(b"\x00" * 10, pb.TunnelMessage)
    with pytest.raises(RemoteProtocolError, match="no payload"):
        decode_message(b"\x0a\x02\x08\x05", pb.TunnelMessage)  # rpc{msg_id: 5} only
    # an unknown message type from a newer peer is not "no payload"
    unknown = decode_message(b"\x0a\x02\x08\x05" + b"\xfa\x06\x00", pb.ManagerMessage)
    assert unknown.WhichOneof("msg") is None and unknown.rpc.msg_id == 5
    # an empty reply (the answer to an unknown request) is valid
    empty_reply = decode_message(b"\x0a\x02\x10\x03", pb.ManagerMessage)
    assert empty_reply.rpc.response_to == 3


def test_rpc_core_numbers_matches_and_drops() -> None:
    core = RPCCore("manager")
    a, b = pb.ManagerMessage(get_peer_update={}), pb.ManagerMessage(stop={})
    assert (core.new_request(a), core.new_request(b)) == (1, 2)
    assert a.rpc.msg_id == 1 and b.rpc.msg_id == 2
    ev = core.receive(pb.TunnelMessage(rpc={"response_to": 2}, stop={}))
    assert isinstance(ev, Response) and ev.response_to == 2 and ev.kind == "stop"
    again = core.receive(pb.TunnelMessage(rpc={"response_to": 2}, stop={}))
    assert isinstance(again, UnknownResponse)  # delivered at most once
    core.forget(1)
    assert isinstance(core.receive(pb.TunnelMessage(rpc={"response_to": 1}, peer_update={})), UnknownResponse)
    req = core.receive(pb.TunnelMessage(rpc={"msg_id": 1}, network_settings={}))
    assert isinstance(req, Request) and req.msg_id == 1  # the peer's own numbering
    assert isinstance(core.receive(pb.TunnelMessage(log={"message": "x"})), Notice)
    core.new_request(pb.ManagerMessage(get_peer_update={}))
    assert core.close() == [3] and core.pending == set()


def test_stop_reply_is_the_tunnels_last_frame() -> None:
    core = RPCCore("tunnel")
    core.encode(pb.TunnelMessage(log={"message": "before"}))
    stop = core.make_reply(9, pb.TunnelMessage(stop={"success": True}))
    frame = core.encode(stop)
    assert frame[4:] == stop.SerializeToString() and core.finished
    with pytest.raises(LocalProtocolError):
        core.encode(pb.TunnelMessage(log={"message": "after"}))
    with pytest.raises(LocalProtocolError):
        RPCCore("manager").encode(pb.TunnelMessage(log={}))  # wrong direction
    with pytest.raises(LocalProtocolError):
        core.make_reply(0, pb.TunnelMessage())
