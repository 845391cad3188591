"""The RPC speaker against a raw-bytes peer written by hand.

The peer here reads and writes bytes directly (headers, length prefixes, protobuf), never
through a second Speaker, so a bug shared by both ends cannot hide. Every test is bounded
by `fail_after`, with trio's autojump clock where a deadline must pass.
"""

from __future__ import annotations

import logging
import os
import struct

import pytest
import trio
import trio.testing
from helpers.manager_peer import RawPeer, frame

from trivpn.manager import manager_pb2 as pb
from trivpn.manager.framing import Version
from trivpn.manager.speaker import HandshakeError, RPCClosed, Speaker

LIMIT = 10  # seconds of trio time for any one test


async def _started(role: str, nursery: trio.Nursery, peer_header: bytes, **kw: object) -> tuple[Speaker, RawPeer]:
    a, b = trio.testing.memory_stream_pair()
    speaker = Speaker(a, role, **kw)  # type: ignore[arg-type]
    peer = RawPeer(b)
    await peer.write(peer_header)
    await nursery.start(speaker.run)
    return speaker, peer


async def test_handshake_exact_bytes_and_first_frame_in_same_write() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            req = pb.ManagerMessage(rpc={"msg_id": 7}, get_peer_update={})
            speaker, peer = await _started("tunnel", nursery, b"trivpn manager 1.4\n" + frame(req))
            assert speaker.version == Version(1, 0)
            assert await peer.read_line() == b"trivpn tunnel 1.0\n"
            batch = await speaker.requests.receive()
            assert [(r.kind, r.msg_id) for r in batch] == [("get_peer_update", 7)]  # type: ignore[union-attr]
            await speaker.reply(batch[0], pb.TunnelMessage(peer_update={}))  # type: ignore[arg-type]
            reply = await peer.read_frame(pb.TunnelMessage)
            assert reply.rpc.response_to == 7 and reply.rpc.msg_id == 0  # type: ignore[attr-defined]
            assert reply.WhichOneof("msg") == "peer_update"  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()


async def test_negotiates_highest_common_major() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            versions = (Version(1, 3), Version(2, 1))
            speaker, peer = await _started("manager", nursery, b"trivpn tunnel 1.1,2.4,5.0\n", versions=versions)
            assert speaker.version == Version(2, 1)
            assert await peer.read_line() == b"trivpn manager 1.3,2.1\n"
            nursery.cancel_scope.cancel()


BAD_HEADERS = {
    "wrong preamble": b"codervpn manager 1.0\n",
    "wrong role": b"trivpn tunnel 1.0\n",
    "old order": b"trivpn 1.0 manager\n",
    "two parts": b"trivpn manager\n",
    "unsorted": b"trivpn manager 2.0,1.0\n",
    "duplicate major": b"trivpn manager 1.0,1.2\n",
    "version zero": b"trivpn manager 0.1\n",
    "no common major": b"trivpn manager 2.0,3.0\n",
    "oversized": b"trivpn manager " + b"1" * 753,  # 768 bytes, no newline
    "not ascii": b"trivpn manager 1.\xc3\xa9\n",
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
async def test_bad_header_fails_handshake_and_hangs_up(case: str) -> None:
    with trio.fail_after(LIMIT):
        a, b = trio.testing.memory_stream_pair()
        speaker = Speaker(a, "tunnel")
        peer = RawPeer(b)

        async def peer_side() -> None:
            await peer.write(BAD_HEADERS[case])
            assert await peer.read_line() == b"trivpn tunnel 1.0\n"

        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer_side)
            with pytest.raises(HandshakeError):
                await speaker.run()
        assert speaker.finished
        with pytest.raises(RPCClosed):
            await speaker.request(pb.TunnelMessage(network_settings={}))
        # the speaker hung up: the peer sees end of stream (oversized: possibly mid-write)
        try:
            await peer.expect_eof()
        except trio.BrokenResourceError:
            pass


async def test_header_deadline(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(LIMIT):
        a, b = trio.testing.memory_stream_pair()
        speaker = Speaker(a, "manager")
        with pytest.raises(HandshakeError, match="within 5 s"):
            await speaker.run()
        peer = RawPeer(b)
        assert await peer.read_line() == b"trivpn manager 1.0\n"
        await peer.expect_eof()


async def test_peer_hangs_up_during_handshake() -> None:
    with trio.fail_after(LIMIT):
        a, b = trio.testing.memory_stream_pair()
        speaker = Speaker(a, "manager")
        await b.send_all(b"trivpn tun")
        await b.aclose()
        with pytest.raises(HandshakeError, match="hung up|could not send"):
            await speaker.run()


async def test_a_broken_pipe_ends_the_handshake_at_once_and_is_named() -> None:
    """A pipe whose reader is gone: trio's BrokenResourceError has no text, so the reason
    read "could not send our header: ", and only after the 5 s deadline."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    os.close(out_r)  # our writes fail; the peer's side stays silent
    stream = trio.StapledStream(trio.lowlevel.FdStream(out_w), trio.lowlevel.FdStream(in_r))
    try:
        with trio.fail_after(1):
            with pytest.raises(HandshakeError, match="^could not send our header: the peer hung up$"):
                await Speaker(stream, "manager").run()
    finally:
        os.close(in_w)


async def _hang_up_case(data: bytes) -> tuple[Speaker, RawPeer, list[BaseException]]:
    """Manager speaker with one request in flight; the raw tunnel then sends `data`."""
    errors: list[BaseException] = []
    async with trio.open_nursery() as nursery:
        speaker, peer = await _started("manager", nursery, b"trivpn tunnel 1.0\n")
        await peer.read_line()

        async def caller() -> None:
            try:
                await speaker.request(pb.ManagerMessage(get_peer_update={}))
            except RPCClosed as exc:
                errors.append(exc)

        nursery.start_soon(caller)
        sent = await peer.read_frame(pb.ManagerMessage)
        assert sent.rpc.msg_id == 1  # type: ignore[attr-defined]
        await peer.write(data)
        await speaker.wait_closed()
    return speaker, peer, errors


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (struct.pack(">I", 0x1000001), "exceeds"),
        (struct.pack(">I", 0xFFFFFFFF) + b"x" * 100, "exceeds"),
        (struct.pack(">I", 0), "zero-length"),
        (struct.pack(">I", 10) + b"\x00" * 10, "corrupt"),  # the reference's corrupt message
        (frame(pb.TunnelMessage(rpc={"msg_id": 3})), "no payload"),
        (b"\x00\x00\x00\x05ab", "end of stream inside a frame"),
    ],
)
async def test_bad_frames_hang_up_and_fail_pending_rpcs(data: bytes, why: str) -> None:
    with trio.fail_after(LIMIT):
        if why.startswith("end of stream"):
            a, b = trio.testing.memory_stream_pair()
            speaker = Speaker(a, "manager")
            peer = RawPeer(b)
            errors: list[BaseException] = []
            async with trio.open_nursery() as nursery:
                await peer.write(b"trivpn tunnel 1.0\n")
                await nursery.start(speaker.run)

                async def caller() -> None:
                    try:
                        await speaker.request(pb.ManagerMessage(get_peer_update={}))
                    except RPCClosed as exc:
                        errors.append(exc)

                nursery.start_soon(caller)
                await peer.read_line()
                await peer.read_frame(pb.ManagerMessage)
                await peer.write(data)
                await b.send_eof()  # type: ignore[attr-defined]
            assert speaker.closed_reason == why and len(errors) == 1
            return
        speaker, peer, errors = await _hang_up_case(data)
        assert speaker.closed_reason is not None and why in speaker.closed_reason
        assert len(errors) == 1 and "hung up" in str(errors[0])
        await peer.expect_eof()
        with pytest.raises(RPCClosed):
            await speaker.send(pb.ManagerMessage(get_peer_update={}))


async def test_good_frames_before_a_bad_length_are_delivered() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            log = pb.TunnelMessage(log={"message": "last words"})
            speaker, peer = await _started(
                "manager", nursery, b"trivpn tunnel 1.0\n" + frame(log) + struct.pack(">I", 0)
            )
            batch = await speaker.requests.receive()
            assert batch[0].kind == "log" and batch[0].message.log.message == "last words"
            await speaker.wait_closed()
            assert speaker.closed_reason == "zero-length message"


async def test_responses_match_by_id_out_of_order_and_unknown_ones_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            speaker, peer = await _started("manager", nursery, b"trivpn tunnel 1.0\n")
            await peer.read_line()
            results: dict[str, object] = {}
            both = trio.Event()

            async def call(name: str, msg: object) -> None:
                results[name] = await speaker.request(msg)
                if len(results) == 2:
                    both.set()

            nursery.start_soon(call, "peer", pb.ManagerMessage(get_peer_update={}))
            first = await peer.read_frame(pb.ManagerMessage)
            nursery.start_soon(call, "stop", pb.ManagerMessage(stop={}))
            second = await peer.read_frame(pb.ManagerMessage)
            assert (first.rpc.msg_id, second.rpc.msg_id) == (1, 2)  # type: ignore[attr-defined]
            with caplog.at_level(logging.WARNING, logger="trivpn.manager"):
                await peer.write(
                    frame(pb.TunnelMessage(rpc={"response_to": 99}, peer_update={}))  # nobody asked
                    + frame(pb.TunnelMessage(rpc={"response_to": 2}, stop={"success": True}))
                    + frame(pb.TunnelMessage(rpc={"response_to": 1}, peer_update={"upserted_peers": [{"name": "x"}]}))
                )
                await both.wait()
            assert results["stop"].stop.success  # type: ignore[attr-defined]
            assert results["peer"].peer_update.upserted_peers[0].name == "x"  # type: ignore[attr-defined]
            assert speaker.dropped_responses == 1
            assert any("unknown request 99" in r.getMessage() for r in caplog.records)
            assert speaker.closed_reason is None  # dropping is not a reason to hang up
            nursery.cancel_scope.cancel()


async def test_cancelled_request_forgets_its_id_and_late_reply_is_dropped() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            speaker, peer = await _started("manager", nursery, b"trivpn tunnel 1.0\n")
            await peer.read_line()
            with trio.move_on_after(0.05) as scope:
                await speaker.request(pb.ManagerMessage(get_peer_update={}))
            assert scope.cancelled_caught
            assert speaker.core.pending == set()
            sent = await peer.read_frame(pb.ManagerMessage)
            await peer.write(frame(pb.TunnelMessage(rpc={"response_to": sent.rpc.msg_id}, peer_update={})))  # type: ignore[attr-defined]

            async def answer_next() -> None:
                nxt = await peer.read_frame(pb.ManagerMessage)
                assert nxt.rpc.msg_id == 2  # type: ignore[attr-defined]
                await peer.write(frame(pb.TunnelMessage(rpc={"response_to": 2}, stop={"success": True})))

            nursery.start_soon(answer_next)
            reply = await speaker.request(pb.ManagerMessage(stop={}))
            assert reply.stop.success and speaker.dropped_responses == 1
            nursery.cancel_scope.cancel()


async def test_unknown_request_gets_an_empty_reply() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            # msg_id 5 with a message type (field 31) that this version does not know
            newer = pb.ManagerMessage(rpc={"msg_id": 5}).SerializeToString() + b"\xfa\x01\x00"
            speaker, peer = await _started(
                "tunnel", nursery, b"trivpn manager 1.9\n" + struct.pack(">I", len(newer)) + newer
            )
            await peer.read_line()
            reply = await peer.read_frame(pb.TunnelMessage)
            assert reply.rpc.response_to == 5 and reply.WhichOneof("msg") is None  # type: ignore[attr-defined]
            nursery.cancel_scope.cancel()


async def test_stop_reply_is_the_last_frame_then_eof() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            stop = pb.ManagerMessage(rpc={"msg_id": 1}, stop={})
            speaker, peer = await _started("tunnel", nursery, b"trivpn manager 1.0\n" + frame(stop))
            await peer.read_line()
            batch = await speaker.requests.receive()
            await speaker.send(pb.TunnelMessage(log={"message": "bye"}))
            await speaker.reply(batch[0], pb.TunnelMessage(stop={"success": True}))  # type: ignore[arg-type]
            with pytest.raises(RPCClosed):
                await speaker.send(pb.TunnelMessage(log={"message": "too late"}))
            assert speaker.send_nowait(pb.TunnelMessage(log={"message": "too late"})) is False
            assert (await peer.read_frame(pb.TunnelMessage)).log.message == "bye"  # type: ignore[attr-defined]
            assert (await peer.read_frame(pb.TunnelMessage)).stop.success  # type: ignore[attr-defined]
            await peer.expect_eof()
            await speaker.wait_closed()


async def test_peer_hang_up_ends_requests_channel() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            speaker, peer = await _started("tunnel", nursery, b"trivpn manager 1.0\n")
            await peer.stream.aclose()
            batches = [b async for b in speaker.requests]
            assert batches == [] and speaker.closed_reason == "end of stream"
