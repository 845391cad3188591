"""The TCP data-plane threads (`datachannel.tcpfast`) over real sockets, without root.

The "TUN" is a LinuxTun over a SOCK_SEQPACKET socketpair (packet boundaries kept, like a TUN
fd); the "server" is the far end of a stream socketpair carrying length-prefixed packets,
with a server-role DataChannel holding the same key. Every wait is bounded by
`trio.fail_after`; waits for what a thread does poll a condition, never sleep blindly.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
from helpers.waiting import until

from trivpn.datachannel import coalesce, tcpfast
from trivpn.datachannel.core import DataChannel
from trivpn.datachannel.service import DataService
from trivpn.datachannel.tcpfast import TCPPathIO, TCPThreadPlane
from trivpn.datachannel.threadrun import LONE_GAP
from trivpn.errors import SessionRestart
from trivpn.messages import InstallKey, TLSToData
from trivpn.networkio.framing import TCPFramer, frame_packets
from trivpn.networkio.transport import Endpoint, StreamCorrupted, TCPTransport, TransportError
from trivpn.tun.linux import LinuxTun
from trivpn.workers.manager import primary_error

KEY2 = bytes(range(256))
CIPHER = "CHACHA20-POLY1305"
LIMIT = 10.0


class Rig:
    def __init__(self, layout: str = "adaptive", stream: str = "unix") -> None:
        self.layout = layout
        self.app, tun_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        tun_end.setblocking(False)
        self.tun = LinuxTun(os.dup(tun_end.fileno()), "fake0")
        tun_end.close()
        if stream == "tcp":  # a loopback connection; the server sends each write as a segment
            with socket.create_server(("127.0.0.1", 0)) as listener:
                client = socket.create_connection(listener.getsockname())
                self.server, _addr = listener.accept()
            self.server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self.server, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        client.setblocking(False)
        self.server.settimeout(LIMIT)
        self.app.settimeout(LIMIT)
        ep = Endpoint("127.0.0.1", 1194, "tcp", socket.AF_INET, ("127.0.0.1", 1194))
        self.transport = TCPTransport(client, ep)
        self.peer = DataChannel(cipher=CIPHER, is_server=True, peer_id=3)
        self.peer.install_key(0, KEY2, 0.0)
        self.framer = TCPFramer()
        self.to_mux_s, self.to_mux_r = trio.open_memory_channel[list[bytes]](8)
        self.from_mux_s, from_mux_r = trio.open_memory_channel[list[bytes]](8)
        self.keys_s, keys_r = trio.open_memory_channel[list[TLSToData]](8)
        self.plane = TCPThreadPlane(TCPPathIO(self.transport, self.tun, self.to_mux_s, from_mux_r,
                                              split=layout == "two", adaptive=layout == "adaptive"))
        self.service = DataService(control=keys_r, plane=self.plane)

    async def server_packets(self, n: int) -> list[bytes]:
        """The next `n` packets the client wrote to the stream."""
        got: list[bytes] = []
        while len(got) < n:
            chunk = await trio.to_thread.run_sync(self.server.recv, 65536)
            assert chunk, "the client closed the stream"
            got.extend(self.framer.feed(chunk))
        return got

    async def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self.service.run)
        await self.keys_s.send([InstallKey(0, KEY2, CIPHER, 3, None, 0.0)])
        await until(lambda: self.service.core is not None, "key installed")

    def close(self) -> None:
        for s in (self.app, self.server):
            s.close()
        self.transport.close()
        self.tun.close()


LAYOUTS = ["one", "two", "adaptive"]
NAMES = {
    "one": {"trivpn tcp data"},
    "two": {"trivpn tcp data up", "trivpn tcp data down"},
    "adaptive": {"trivpn tcp data", "trivpn tcp data bulk"},
}


@pytest.fixture(params=LAYOUTS)
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """Every test runs against each layout (see `tcpfast`'s docstring)."""
    r = Rig(request.param)
    yield r
    r.close()


def _ip(i: int, size: int = 100) -> bytes:
    return bytes([0x45]) + i.to_bytes(4, "big") + bytes(size - 5)


def _no_threads_left() -> bool:
    return not any(t.name.startswith("trivpn tcp data") and t.is_alive() for t in threading.enumerate())


async def test_both_directions_and_control_both_ways(rig: Rig) -> None:
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        # TUN → stream: sealed, framed, in order.
        sent = [_ip(i, 60 + i) for i in range(50)]
        for p in sent:
            rig.app.send(p)
        wire = await rig.server_packets(len(sent))
        assert rig.peer.decrypt(wire, 1.0) == sent

        # stream → TUN, the frames cut anywhere: every packet comes out whole, in order.
        back = [_ip(1000 + i, 1400) for i in range(300)]
        stream = frame_packets(rig.peer.encrypt(back, 1.0))

        def write_cut() -> None:
            for at in range(0, len(stream), 977):
                rig.server.sendall(stream[at : at + 977])

        nursery.start_soon(trio.to_thread.run_sync, write_cut)  # while the app reads
        out = [await trio.to_thread.run_sync(rig.app.recv, 65536) for _ in back]
        assert out == back

        # What is not P_DATA goes to the muxer; the muxer's packets leave on the stream.
        control = bytes([7 << 3]) + bytes(13)
        rig.server.sendall(frame_packets([control]))
        with trio.fail_after(LIMIT):
            assert await rig.to_mux_r.receive() == [control]
        mine = bytes([8 << 3]) + bytes(20)
        await rig.from_mux_s.send([mine, mine])
        assert await rig.server_packets(2) == [mine, mine]
        names = {t.name for t in threading.enumerate() if t.is_alive()}
        assert NAMES[rig.layout] <= names
        nursery.cancel_scope.cancel()
    assert _no_threads_left()


async def test_many_control_batches_wait_for_the_down_thread(rig: Rig) -> None:
    """More batches than the queue holds: all leave, in order (the writer waits for room)."""
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        batches = [[bytes([8 << 3]) + i.to_bytes(2, "big")] for i in range(200)]

        async def produce() -> None:
            for b in batches:
                await rig.from_mux_s.send(b)

        nursery.start_soon(produce)
        assert await rig.server_packets(len(batches)) == [b[0] for b in batches]
        nursery.cancel_scope.cancel()
    assert _no_threads_left()


async def _session_error(rig: Rig, act: Callable[[], None]) -> BaseException:
    with pytest.raises(BaseException) as info:  # noqa: PT011 - checked by the callers
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await rig.start(nursery)
                act()
                await trio.sleep_forever()
    assert _no_threads_left()
    return primary_error(info.value)


async def test_a_bad_length_prefix_is_a_corrupt_stream(rig: Rig) -> None:
    def inject() -> None:
        rig.server.sendall(frame_packets(rig.peer.encrypt([_ip(1)], 1.0)) + b"\x00\x00")

    err = await _session_error(rig, inject)
    assert isinstance(err, StreamCorrupted)  # a TransportError: the client restarts
    assert "invalid TCP frame length 0" in str(err)


async def test_the_end_of_the_stream_is_a_transport_error(rig: Rig) -> None:
    err = await _session_error(rig, lambda: rig.server.shutdown(socket.SHUT_WR))
    assert isinstance(err, TransportError)
    assert "closed the TCP connection" in str(err)


async def test_exit_notification_restarts_the_session(rig: Rig) -> None:
    exit_packet = rig.peer.exit_packet(1.0)
    assert exit_packet is not None
    err = await _session_error(rig, lambda: rig.server.sendall(frame_packets([exit_packet])))
    assert isinstance(err, SessionRestart)
    assert "exit notification" in str(err)


async def test_keepalive_pings_leave_on_the_stream(rig: Rig) -> None:
    async with trio.open_nursery() as nursery:
        await rig.start(nursery)
        rig.service._request(pings=2)  # what the keepalive timer does
        wire = await rig.server_packets(2)
        assert len(rig.peer.decrypt(wire, 1.0)) == 0  # pings are consumed by the peer's core
        assert rig.peer.stats.rx_pings == 2
        nursery.cancel_scope.cancel()


class _CountingSocket(socket.socket):
    """The client's end of the stream, counting the up thread's reads."""

    reads = 0

    def recv_into(self, *args: object) -> int:  # type: ignore[override]
        _CountingSocket.reads += 1
        return super().recv_into(*args)  # type: ignore[arg-type]


async def test_after_a_lone_packet_each_thread_sleeps_without_reading_dry() -> None:
    """An idle ping costs one read per direction: the thread that handled the packet which
    ended its wait waits again at once instead of first reading its fd to EAGAIN."""
    rig = Rig("two")  # the fixed thread-per-direction layout
    counting = _CountingSocket(fileno=os.dup(rig.transport.sock.fileno()))
    counting.setblocking(False)
    rig.transport.sock.close()
    rig.transport.sock = counting
    _CountingSocket.reads = 0
    tun_reads = [0]
    read = rig.tun.read_nowait

    def counted_read(limit: int = 0) -> list[bytes] | None:
        tun_reads[0] += 1
        return read(limit)

    rig.tun.read_nowait = counted_read  # type: ignore[method-assign]  # test double
    try:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await rig.start(nursery)
                await until(lambda: _threads(rig).up_waits >= 1 and _threads(rig).down_waits >= 1,
                            "both blocked")
                lone: list[tuple[int, int]] = []
                for i in range(1, 6):
                    threads = _threads(rig)
                    waits = (threads.up_waits, threads.down_waits)
                    reads = (_CountingSocket.reads, tun_reads[0])
                    rig.app.send(_ip(i))
                    assert rig.peer.decrypt(await rig.server_packets(1), 1.0) == [_ip(i)]
                    rig.server.sendall(frame_packets(rig.peer.encrypt([_ip(100 + i)], 1.0)))
                    assert await trio.to_thread.run_sync(rig.app.recv, 65536) == _ip(100 + i)
                    await until(lambda: threads.up_waits > waits[0]  # noqa: B023
                                and threads.down_waits > waits[1], "both blocked again")  # noqa: B023
                    lone.append((_CountingSocket.reads - reads[0], tun_reads[0] - reads[1]))
                    await trio.sleep(0.005)  # the next ping comes later: lone again
                nursery.cancel_scope.cancel()
            # the old code read each fd to EAGAIN after every lone packet
            assert lone.count((1, 1)) >= 3, lone  # most, not all: on a loaded machine a wake-up can come late enough to find the next input queued (then whole batches, by design)
    finally:
        rig.close()


@pytest.mark.parametrize("layout", ["one", "adaptive"])
async def test_one_thread_sleeps_at_once_after_a_lone_packet(layout: str) -> None:
    """The same in the one-thread layouts: one read per direction and one wait after each
    packet of an idle ping (before: a `poll(0)` and a read to EAGAIN after each)."""
    rig = Rig(layout)
    counting = _CountingSocket(fileno=os.dup(rig.transport.sock.fileno()))
    counting.setblocking(False)
    rig.transport.sock.close()
    rig.transport.sock = counting
    _CountingSocket.reads = 0
    tun_reads = [0]
    read = rig.tun.read_nowait

    def counted_read(limit: int = 0) -> list[bytes] | None:
        tun_reads[0] += 1
        return read(limit)

    rig.tun.read_nowait = counted_read  # type: ignore[method-assign]  # test double
    try:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await rig.start(nursery)
                await until(lambda: _threads(rig).down_waits >= 1, "blocked")
                await trio.sleep(0.005)
                costs: list[tuple[int, int, int]] = []
                for i in range(1, 6):
                    threads = _threads(rig)
                    waits = threads.down_waits
                    reads = (_CountingSocket.reads, tun_reads[0])
                    rig.app.send(_ip(i))
                    assert rig.peer.decrypt(await rig.server_packets(1), 1.0) == [_ip(i)]
                    await until(lambda: threads.down_waits > waits, "blocked after the request")  # noqa: B023
                    await trio.sleep(10 * LONE_GAP)  # a reply within LONE_GAP would count as queued input
                    rig.server.sendall(frame_packets(rig.peer.encrypt([_ip(100 + i)], 1.0)))
                    assert await trio.to_thread.run_sync(rig.app.recv, 65536) == _ip(100 + i)
                    await until(lambda: threads.down_waits > waits + 1, "blocked after the reply")  # noqa: B023
                    costs.append((_CountingSocket.reads - reads[0], tun_reads[0] - reads[1], threads.down_waits - waits))
                    await trio.sleep(0.005)  # the next ping comes later: lone again
                nursery.cancel_scope.cancel()
            # the old code ran a poll(0) and a read to EAGAIN after every lone packet
            assert costs.count((1, 1, 2)) >= 3, costs  # most, not all: on a loaded machine a wake-up can come late enough to find the next input queued (then whole batches, by design)
    finally:
        rig.close()


def _threads(rig: Rig) -> Any:
    threads = rig.plane.threads
    assert threads is not None
    return threads


async def _burst_to_app(rig: Rig, count: int) -> None:
    """The server writes `count` full-size data packets in one go; the app reads them all."""
    stream = frame_packets(rig.peer.encrypt([_ip(10 + i, 1400) for i in range(count)], 1.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, rig.server.sendall, stream)
        for i in range(count):
            assert await trio.to_thread.run_sync(rig.app.recv, 65536) == _ip(10 + i, 1400)


async def _round_trip(rig: Rig, i: int) -> None:
    rig.app.send(_ip(i))
    assert rig.peer.decrypt(await rig.server_packets(1), 1.0) == [_ip(i)]
    rig.server.sendall(frame_packets(rig.peer.encrypt([_ip(100 + i)], 1.0)))
    assert await trio.to_thread.run_sync(rig.app.recv, 65536) == _ip(100 + i)


async def test_adaptive_hands_bulk_input_over_and_takes_it_back_when_quiet() -> None:
    rig = Rig("adaptive")
    try:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await rig.start(nursery)
                threads = _threads(rig)
                handoff = threads.handoff
                await until(lambda: threads.up_waits == 1, "the bulk thread waits for a hand-over")
                for i in range(1, 4):
                    await _round_trip(rig, i)
                assert handoff.given == 0  # pings never wake the second thread
                await _burst_to_app(rig, 300)
                assert handoff.given >= 1
                await until(lambda: threads.up_waits == handoff.given + 1, "the stream given back")
                given = handoff.given
                for i in range(4, 7):
                    await _round_trip(rig, i)
                assert handoff.given == given
                nursery.cancel_scope.cancel()
    finally:
        rig.close()
    assert _no_threads_left()


async def test_adaptive_stops_while_the_bulk_thread_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcpfast, "HANDOFF_QUIET", LIMIT * 10)  # never given back here
    rig = Rig("adaptive")
    try:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await rig.start(nursery)
                await _burst_to_app(rig, 300)
                assert _threads(rig).handoff.given == 1
                await _round_trip(rig, 1)  # in through the bulk thread, out through the first
                nursery.cancel_scope.cancel()
    finally:
        rig.close()
    assert _no_threads_left()


@pytest.mark.parametrize("layout", ["one", "adaptive"])
async def test_one_thread_keeps_reading_while_its_sends_wait(layout: str) -> None:
    """The server stops reading: the client's stream fills and its sends wait. What the
    server sends meanwhile still reaches the TUN (the one thread reads while it waits to
    write), and once the server reads again everything it was sent arrives, in order."""
    rig = Rig(layout)
    rig.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await rig.start(nursery)
                sent: list[bytes] = []
                rig.app.setblocking(False)
                for i in range(400):  # more than the stream holds while nobody reads
                    try:
                        rig.app.send(_ip(i, 1400))
                    except BlockingIOError:  # the TUN is full too: the thread waits to send
                        break
                    sent.append(_ip(i, 1400))
                    if i % 8 == 7:
                        await trio.sleep(0.001)  # let the thread take them
                rig.app.settimeout(LIMIT)
                count = len(sent)
                assert count > 20
                threads = _threads(rig)
                await until(lambda: rig.transport.tx_packets > 0, "the client sending")
                for i in range(3):
                    rig.server.sendall(frame_packets(rig.peer.encrypt([_ip(5000 + i)], 1.0)))
                    assert await trio.to_thread.run_sync(rig.app.recv, 65536) == _ip(5000 + i)
                assert threads.handoff is None or threads.handoff.given == 0
                got = rig.peer.decrypt(await rig.server_packets(count), 1.0)
                assert got == sent
                nursery.cancel_scope.cancel()
    finally:
        rig.close()
    assert _no_threads_left()


async def test_an_uploads_returning_acks_are_read_together() -> None:
    """TCP, one-thread layouts (`coalesce.tcp_ack_lowat_after`): after an upload's busy batch
    the stream wakes the thread only once `tcp_ack_lowat` bytes wait, so ACK-sized packets
    that a peer without Nagle sends as one segment each are read in one go instead of one
    wake-up and read each; fewer bytes are still read when the wait times out, and the
    stream wakes at the first byte again. Pings alone never raise it. A real TCP connection:
    a unix socket's poll ignores SO_RCVLOWAT."""
    rig = Rig("adaptive", stream="tcp")
    rig.plane.io.rx = coalesce.RxCoalesce(tcp_ack_lowat=600, tcp_wait_ms=1000)  # a wide window
    counting = _CountingSocket(fileno=os.dup(rig.transport.sock.fileno()))
    counting.setblocking(False)
    rig.transport.sock.close()
    rig.transport.sock = counting
    set_to: list[int] = []
    try:
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await rig.start(nursery)
                threads = _threads(rig)
                lowat = threads._lowat

                def recorded(value: int) -> None:
                    set_to.append(value)
                    lowat(value)

                threads._lowat = recorded
                for i in range(1, 4):
                    await _round_trip(rig, i)
                assert set_to == []  # pings never gather
                for burst in range(20):  # until one TUN read held a busy batch (≥ tun_min)
                    upload = [_ip(1000 + 32 * burst + i, 1400) for i in range(32)]
                    for packet in upload:
                        rig.app.send(packet)
                    assert rig.peer.decrypt(await rig.server_packets(32), 1.0) == upload
                    if set_to:
                        break
                assert set_to == [600]
                # six ACK-sized packets, one segment each (86 bytes on the stream): below 600
                acks = [_ip(2000 + i, 60) for i in range(7)]
                reads = _CountingSocket.reads
                for ack in acks[:6]:
                    rig.server.sendall(frame_packets(rig.peer.encrypt([ack], 1.0)))
                    await trio.sleep(0.005)
                await trio.sleep(0.05)
                assert _CountingSocket.reads == reads  # the thread did not wake for them
                rig.server.sendall(frame_packets(rig.peer.encrypt([acks[6]], 1.0)))  # 602 bytes
                for ack in acks:
                    assert await trio.to_thread.run_sync(rig.app.recv, 65536) == ack
                await until(lambda: _CountingSocket.reads >= reads + 2, "read to EAGAIN")
                assert _CountingSocket.reads == reads + 2  # all seven, then nothing more
                # one more, below the mark: read once the wait times out; then back to 1
                rig.server.sendall(frame_packets(rig.peer.encrypt([_ip(3000, 60)], 1.0)))
                assert await trio.to_thread.run_sync(rig.app.recv, 65536) == _ip(3000, 60)
                await until(lambda: set_to == [600, 1], "back to waking at the first byte")
                assert counting.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
                await _round_trip(rig, 4)
                assert set_to == [600, 1]
                nursery.cancel_scope.cancel()
    finally:
        rig.close()
    assert _no_threads_left()
