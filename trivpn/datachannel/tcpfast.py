"""Data-plane threads for a TCP session over a kernel TUN (the TCP sibling of `fastpath`).

Why: on the trio path a download crossed four task hops per batch (socket reader → muxer →
data channel → TUN writer), each a pass of the run loop, and the TCP reader copied every
byte three times on its way to a packet. Profiled during `iperf3 -R` (docs/performance.md)
the client spent about two thirds of its CPU in user space — the trio scheduler, channel
hand-overs, the framer — for a path whose real work is one `recv`, one AEAD call per packet
and one TUN `write` per packet. On a 2-core machine shared with the server, every cycle the
client saves is a cycle the server can spend sending.

Theory of operation. `TCPThreadPlane.run` (a `plane.DataPlane`) runs two threads and one
trio task:

* **up** (thread): `recv_into` the `networkio.splitter.FrameSplitter`'s buffer, which
  deframes in place and sorts packets into data and control in one pass. Data packets are
  opened with the session's `Decryptor` and written to the TUN; control packets (and
  anything that is not P_DATA) go to the packet muxer's input channel through
  `TrioToken.run_sync_soon`, never blocking (a full channel drops the batch and counts it;
  the reliable layer retransmits). A bad length prefix raises `StreamCorrupted`, the end of
  the stream `TransportError`: both end the session with a restart, as on the trio path.
* **down** (thread): the only writer of the TCP stream. It drains the TUN, seals the batch
  with the session's `Encryptor`, frames it and writes it with as few `send` calls as the
  socket allows; between batches it sends the pings and exit notifications the service
  requested (`DataLink.requests`) and the control packets the muxer produced.
* **control writer** (trio task): takes the muxer's batches (networkio's input in the trio
  plane; networkio does not run in this mode) and queues them for the down thread, waking
  it through the kick pipe. The queue is bounded: while it is full the task waits, which
  backs the muxer up exactly like a full socket would.

With sporadic traffic (an idle ping) each thread handles the packet that ended its wait
and waits again at once, without first reading its fd dry: one system call less per
packet and direction (`DataThreads._wait_after_lone`; the down thread reads that packet
alone, too). A wait that returns at once means input was queued: whole batches follow.

A TCP stream has one writer and one reader, so each thread owns one direction of the socket
and one direction of the crypto state (`Encryptor` / `Decryptor`, see `datachannel.keys` for
why no lock is needed). Time comes from the link's clock.

Structured concurrency holds as in `fastpath` (both run their threads with `threadrun`): a
thread's exception comes out of
`trio.to_thread.run_sync` and cancels the session; cancellation (or one side ending) sets a
flag and writes a stop pipe both threads poll next to their fd, and `run` returns only after
both threads did, so the socket (closed by the client after the session) and the TUN are
never closed under a running thread.
"""

from __future__ import annotations

import collections
import select
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from trivpn.datachannel import coalesce
from trivpn.datachannel.coalesce import RxCoalesce, default_rx_coalesce
from trivpn.datachannel.link import PEER_EXITED, DataLink
from trivpn.datachannel.threadrun import Body, DataThreads, ThreadedPlane
from trivpn.errors import LocalProtocolError, SessionRestart
from trivpn.networkio.framing import MAX_FRAME, FramingError, frame_packets
from trivpn.networkio.splitter import FrameSplitter
from trivpn.networkio.transport import StreamCorrupted, TransportError

if TYPE_CHECKING:
    from trivpn.networkio.transport import TCPTransport
    from trivpn.tun.linux import LinuxTun

__all__ = ["CONTROL_QUEUE", "TCPPathIO", "TCPThreadPlane"]

#: Batches of control packets the down thread may have queued before the muxer waits.
CONTROL_QUEUE = 64


@dataclass(slots=True)
class TCPPathIO:
    """What the TCP data-plane threads work on: the session's TCP transport, the kernel TUN,
    the packet muxer's input (what is not data) and its output (control packets to send)."""

    transport: TCPTransport
    tun: LinuxTun
    to_muxer: trio.MemorySendChannel[list[bytes]]
    from_muxer: trio.MemoryReceiveChannel[list[bytes]]
    #: receive coalescing under bulk traffic (the up thread applies it)
    rx: RxCoalesce = field(default_factory=default_rx_coalesce)


def _frame(packets: Sequence[bytes]) -> bytes:
    """Length-prefix `packets` into one buffer (sealed data packets are always in range)."""
    if max(map(len, packets)) > MAX_FRAME:
        raise LocalProtocolError("a sealed packet does not fit a TCP frame")
    parts: list[bytes] = []
    for p in packets:
        parts.append(len(p).to_bytes(2, "big"))
        parts.append(p)
    return b"".join(parts)


class _Threads(DataThreads[TCPPathIO]):
    """The two thread bodies and what they share (one writer per attribute)."""

    def __init__(self, link: DataLink, io: TCPPathIO, stop_fd: int, kick_fd: int) -> None:
        super().__init__(link, io, stop_fd, kick_fd)
        #: control batches from the muxer (appended by the trio task, popped by down)
        self.control: collections.deque[list[bytes]] = collections.deque()
        #: set by the trio task while it waits for room in `control`; cleared by down
        self.want_room = False
        self.room = trio.Event()
        #: blocking waits per thread (tests read them)
        self.up_waits = 0
        self.down_waits = 0

    def bodies(self) -> list[Body]:
        return [(self.up, "trivpn tcp data up"), (self.down, "trivpn tcp data down")]

    def _wait_for(self, poller: select.poll, ms: int) -> bool:
        """`_wait` with a timeout; False if it expired with nothing ready."""
        return bool(self._ready(poller.poll(ms)))

    # -- network → TUN ----------------------------------------------------------------------

    def up(self) -> None:
        transport = self.io.transport
        sock = transport.sock
        tun = self.io.tun
        link = self.link
        now_fn = link.clock
        readable = self._poller(sock.fileno(), select.POLLIN)
        tun_writable = self._poller(tun.fd, select.POLLOUT)
        splitter = FrameSplitter()
        recv_into = sock.recv_into
        rxc = self.io.rx  # read coalescing (datachannel/coalesce.py)
        raised = False  # SO_RCVLOWAT is up: the kernel wakes us once rxc.tcp_lowat bytes wait
        lone = False  # the last read followed an idle wait (sporadic traffic, e.g. a ping)
        while not self.stopping:
            try:
                n = recv_into(splitter.space())
            except BlockingIOError:
                if raised and not self._wait_for(readable, rxc.tcp_wait_ms):
                    # the stream slowed down: back to waking at the first byte
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                    raised = False
                elif not raised:
                    self.up_waits += 1
                    self._wait(readable)
                    lone = True
                continue
            except OSError as exc:
                raise TransportError(f"TCP receive failed: {exc.strerror}") from None
            if n >= rxc.tcp_busy and not raised:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, rxc.tcp_lowat)
                raised = True
            if not n:
                raise TransportError("the server closed the TCP connection")
            transport.rx_bytes += n
            try:
                data, control = splitter.commit(n)
            except FramingError as exc:
                raise StreamCorrupted(
                    f"the TCP stream from {transport.endpoint.describe()} is corrupt ({exc})"
                ) from None
            transport.rx_packets += len(data) + len(control)
            if control and not self._to_trio(self._deliver, control):
                return
            rx = link.rx_or_drop(len(data)) if data else None
            if rx is not None:
                packets = rx.decrypt(data, now_fn())
                if packets:
                    i = tun.write_nowait(packets)
                    while i < len(packets):
                        self._wait(tun_writable)
                        i = tun.write_nowait(packets, i)
                if rx.peer_exited:
                    raise SessionRestart(PEER_EXITED)
            if lone and not raised:  # wait again at once (`_wait_after_lone`)
                self.up_waits += 1
                lone = not self._wait_after_lone(readable)

    # -- TUN → network ----------------------------------------------------------------------

    def _send(self, data: bytes, writable: select.poll) -> None:
        """Write all of `data` to the stream (the only writer), waiting while it is full."""
        transport = self.io.transport
        send = transport.sock.send
        view = memoryview(data)
        while view:
            try:
                sent = send(view)
            except BlockingIOError:
                self._wait(writable)
                continue
            except OSError as exc:
                raise TransportError(f"TCP send failed: {exc.strerror}") from None
            view = view[sent:]

    def down(self) -> None:
        transport = self.io.transport
        tun = self.io.tun
        link = self.link
        now_fn = link.clock
        control = self.control
        tun_readable = self._poller(tun.fd, select.POLLIN, kick=True)
        writable = self._poller(transport.sock.fileno(), select.POLLOUT)
        served = 0  # link.requests already served
        rxc = self.io.rx
        lone = False  # the last wait was idle: read one packet, then wait again at once
        while not self.stopping:
            if link.requests != served:  # pings / exit notifications to seal
                served = link.requests
                tx = link.tx
                extra = link.requested_packets(tx, now_fn()) if tx is not None else []
                if extra:
                    self._send(_frame(extra), writable)
                    transport.tx_packets += len(extra)
            while control:
                queued = control.popleft()
                self._send(frame_packets(queued), writable)
                transport.tx_packets += len(queued)
            if self.want_room:
                self.want_room = False
                if not self._to_trio(self.room.set):
                    return
            batch = tun.read_nowait(1 if lone else 0)
            if batch is None:
                return  # the device was closed
            if not batch:
                self.down_waits += 1
                self._wait(tun_readable)
                lone = True
                continue
            tx = link.tx_or_drop(len(batch))
            if tx is None:
                continue
            out = tx.encrypt(batch, now_fn())
            if out:
                self._send(_frame(out), writable)
                transport.tx_packets += len(out)
            if lone:  # a kick (control, a ping to send) also ends this wait
                self.down_waits += 1
                lone = not self._wait_after_lone(tun_readable)
            elif len(batch) >= rxc.tun_min and rxc.tun_linger:
                coalesce.linger(rxc.tun_linger)  # bounded


class TCPThreadPlane(ThreadedPlane[TCPPathIO, _Threads]):
    """The data plane of a TCP session as two threads (module docstring); a `plane.DataPlane`."""

    def _make_threads(self, link: DataLink, stop_fd: int, kick_fd: int) -> _Threads:
        return _Threads(link, self.io, stop_fd, kick_fd)

    def _tasks(self, threads: _Threads, stop: Callable[[], None]) -> list[Callable[[], Awaitable[None]]]:
        return [lambda: self._control_writer(threads, stop)]

    async def _control_writer(self, threads: _Threads, stop: Callable[[], None]) -> None:
        """Queue the muxer's control batches for the down thread (module docstring)."""
        async with self.io.from_muxer as from_muxer:
            async for batch in from_muxer:
                if len(threads.control) >= CONTROL_QUEUE:
                    # the stream is backed up: so is the muxer, until down sends a batch
                    threads.room = trio.Event()
                    threads.want_room = True
                    self.kick()
                    await threads.room.wait()
                threads.control.append(batch)
                self.kick()
        stop()  # the muxer closed its output: the session is ending
