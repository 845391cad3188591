"""Data-plane threads for a TCP session over a kernel TUN (the TCP sibling of `fastpath`).

Why: on the trio path a download crossed four task hops per batch (socket reader → muxer →
data channel → TUN writer), each a pass of the run loop, and the TCP reader copied every
byte three times on its way to a packet. Profiled during `iperf3 -R` (docs/performance.md)
the client spent about two thirds of its CPU in user space — the trio scheduler, channel
hand-overs, the framer — for a path whose real work is one `recv`, one AEAD call per packet
and one TUN `write` per packet. On a 2-core machine shared with the server, every cycle the
client saves is a cycle the server can spend sending.

Theory of operation. `TCPThreadPlane.run` (a `plane.DataPlane`) runs data threads and one
trio task. Three layouts, as in `fastpath`: by default (**adaptive**) one thread (`both`)
does the work of *up* and *down* below in turns while traffic is sporadic, so an idle
ping's reply finds the path warm, and a read of `HANDOFF_BYTES` or more hands the stream's
reading side to a second thread (`bulk`, the *up* step) through a `threadrun.Handoff` pipe,
which gives it back after `HANDOFF_QUIET` without input. One reader at a time, so the
`FrameSplitter` and the `Decryptor` still have one user at a time. While the one thread
reads the stream, a send that finds the stream full also waits for input and reads it
(`_send`): a peer that stops reading while its writes to us are stuck could otherwise
never unblock us. `TCPPathIO.split` (TRIVPN_DATA_THREADS=2) runs *up* and *down* as fixed
threads, TRIVPN_DATA_THREADS=1 one thread that never hands over. The steps:

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

In the fixed layout, with sporadic traffic (an idle ping) each thread handles the packet
that ended its wait and waits again at once, without first reading its fd dry: one system
call less per packet and direction (`DataThreads._wait_after_lone`; the down thread reads
that packet alone, too). A wait that returns at once means input was queued: whole
batches follow.

While the one thread reads the stream and has just sent an upload's batch, it waits with
the stream's SO_RCVLOWAT raised (`_gather`, `coalesce.tcp_ack_lowat_after`) for at most
`tcp_wait_ms`: the returning ACKs, one small segment each from a peer without Nagle, are
then read several at a time instead of one wake-up each.

A TCP stream has one writer and one reader, so one thread at a time owns each direction of
the socket and of the crypto state (`Encryptor` / `Decryptor`, see `datachannel.keys` for
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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import field
from typing import TYPE_CHECKING

import trio

from trivpn.datachannel import coalesce
from trivpn.datachannel.coalesce import RxCoalesce, default_rx_coalesce
from trivpn.datachannel.link import PEER_EXITED, DataLink
from trivpn.datachannel.threadrun import (
    LONE_GAP,
    Body,
    DataThreads,
    Handoff,
    Stopped,
    ThreadedPlane,
    adaptive_from_env,
    drain,
    split_from_env,
)
from trivpn.errors import LocalProtocolError, SessionRestart
from trivpn.networkio.framing import MAX_FRAME, FramingError, frame_packets
from trivpn.networkio.splitter import FrameSplitter
from trivpn.networkio.transport import StreamCorrupted, TransportError
from trivpn.records import dataclass

if TYPE_CHECKING:
    from trivpn.networkio.transport import TCPTransport
    from trivpn.tun.linux import LinuxTun

__all__ = ["CONTROL_QUEUE", "TCPPathIO", "TCPThreadPlane"]

#: Batches of control packets the down thread may have queued before the muxer waits.
CONTROL_QUEUE = 64
#: Adaptive layout: a read of at least this many bytes (bulk data) hands the stream's
#: reading side to the bulk thread, which gives it back after `HANDOFF_QUIET` seconds
#: without input.
HANDOFF_BYTES = 16384
HANDOFF_QUIET = 0.02


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
    #: one fixed thread per direction (TRIVPN_DATA_THREADS=2) instead of one thread for
    #: both, which with `adaptive` hands bulk input to a second thread (module docstring)
    split: bool = field(default_factory=split_from_env)
    #: when not `split`: hand the reading side to a second thread while it carries bulk
    #: data (the default; TRIVPN_DATA_THREADS=1 turns it off)
    adaptive: bool = field(default_factory=adaptive_from_env)


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
        #: blocking waits per thread (tests read them; the first thread of the one-thread
        #: layouts counts in `down_waits`, the bulk thread in `up_waits`)
        self.up_waits = 0
        self.down_waits = 0
        #: the stream's reading side: one reader at a time, whichever thread that is
        self.splitter = FrameSplitter()
        self.handoff = Handoff() if io.adaptive and not io.split else None
        #: one-thread layouts, while the first thread reads the stream: the TUN's "writable"
        #: poller for the reads `_send` makes while it waits (None: `_send` only waits)
        self.reading: select.poll | None = None
        #: one-thread layouts: SO_RCVLOWAT is at `RxCoalesce.tcp_ack_lowat` (an upload's
        #: returning ACKs gather before a read; `_gather`)
        self.gathering = False

    def bodies(self) -> list[Body]:
        if self.io.split:
            return [(self.up, "trivpn tcp data up"), (self.down, "trivpn tcp data down")]
        if self.handoff is not None:
            return [(self.both, "trivpn tcp data"), (self.bulk, "trivpn tcp data bulk")]
        return [(self.both, "trivpn tcp data")]

    def _wait_for(self, poller: select.poll, ms: int) -> bool:
        """`_wait` with a timeout; False if it expired with nothing ready."""
        return bool(self._ready(poller.poll(ms)))

    # -- network → TUN ----------------------------------------------------------------------

    def _receive(self, tun_writable: select.poll) -> int:
        """Read once from the stream and deliver what it held: data opened and written to
        the TUN, the rest to the muxer. The bytes read; 0 if nothing was waiting."""
        transport = self.io.transport
        try:
            n = transport.sock.recv_into(self.splitter.space())
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise TransportError(f"TCP receive failed: {exc.strerror}") from None
        if not n:
            raise TransportError("the server closed the TCP connection")
        transport.rx_bytes += n
        try:
            data, control = self.splitter.commit(n)
        except FramingError as exc:
            raise StreamCorrupted(
                f"the TCP stream from {transport.endpoint.describe()} is corrupt ({exc})"
            ) from None
        transport.rx_packets += len(data) + len(control)
        if control and not self._to_trio(self._deliver, control):
            raise Stopped  # the trio run is gone
        link = self.link
        rx = link.rx_or_drop(len(data)) if data else None
        if rx is not None:
            packets = rx.decrypt(data, link.clock())
            if packets:
                tun = self.io.tun
                i = tun.write_nowait(packets)
                while i < len(packets):
                    self._wait(tun_writable)
                    i = tun.write_nowait(packets, i)
            if rx.peer_exited:
                raise SessionRestart(PEER_EXITED)
        return n

    def _lowat(self, value: int) -> None:
        self.io.transport.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)

    def _gather(self, batch: list[bytes]) -> None:
        """After sending `batch` from the TUN (one-thread layouts, this thread reading the
        stream): if it was an upload's, let the returning ACKs gather (coalesce.py)."""
        lowat = coalesce.tcp_ack_lowat_after(self.io.rx, batch)
        if lowat:
            self._lowat(lowat)
            self.gathering = True

    def _ungather(self) -> None:
        """Back to waking at the stream's first byte."""
        if self.gathering:
            self._lowat(1)
            self.gathering = False

    def _wait_gathering(self, poller: select.poll, sock_fd: int) -> list[tuple[int, int]]:
        """`_wait`, or while ACKs gather a wait of at most `tcp_wait_ms`: when it expires
        the stream goes back to waking at the first byte and counts as readable (whatever
        fewer bytes wait are read now)."""
        if not self.gathering:
            return self._wait(poller)
        ready = self._ready(poller.poll(self.io.rx.tcp_wait_ms))
        if not ready:
            self._ungather()
            ready = [(sock_fd, select.POLLIN)]
        return ready

    def up(self) -> None:
        """Stream → TUN, in its own thread (`TCPPathIO.split`)."""
        readable = self._poller(self.io.transport.sock.fileno(), select.POLLIN)
        tun_writable = self._poller(self.io.tun.fd, select.POLLOUT)
        rxc = self.io.rx  # read coalescing (datachannel/coalesce.py)
        raised = False  # SO_RCVLOWAT is up: the kernel wakes us once rxc.tcp_lowat bytes wait
        lone = False  # the last read followed an idle wait (sporadic traffic, e.g. a ping)
        while not self.stopping:
            n = self._receive(tun_writable)
            if not n:
                if raised and not self._wait_for(readable, rxc.tcp_wait_ms):
                    # the stream slowed down: back to waking at the first byte
                    self._lowat(1)
                    raised = False
                elif not raised:
                    self.up_waits += 1
                    self._wait(readable)
                    lone = True
                continue
            if n >= rxc.tcp_busy and not raised:
                self._lowat(rxc.tcp_lowat)
                raised = True
            if lone and not raised:  # wait again at once (`_wait_after_lone`)
                self.up_waits += 1
                lone = not self._wait_after_lone(readable)

    def bulk(self) -> None:
        """Adaptive layout: stream → TUN while `both` has handed the reading side over;
        gives it back after `HANDOFF_QUIET` without input, then sleeps until the next
        hand-over."""
        handoff = self.handoff
        assert handoff is not None  # noqa: S101  # only the adaptive layout runs this body
        given = self._poller(handoff.give_r, select.POLLIN)
        readable = self._poller(self.io.transport.sock.fileno(), select.POLLIN)
        tun_writable = self._poller(self.io.tun.fd, select.POLLOUT)
        rxc = self.io.rx
        quiet_ms = max(1, round(HANDOFF_QUIET * 1000))
        while not self.stopping:
            self.up_waits += 1
            self._wait(given)
            drain(handoff.give_r)
            raised = False
            try:
                while True:  # this thread reads the stream
                    n = self._receive(tun_writable)
                    if n:
                        if n >= rxc.tcp_busy and not raised and rxc.tcp_lowat > 1:
                            self._lowat(rxc.tcp_lowat)
                            raised = True
                    elif raised:
                        if not self._wait_for(readable, rxc.tcp_wait_ms):
                            self._lowat(1)
                            raised = False
                    elif not self._wait_for(readable, quiet_ms):
                        break  # quiet: give it back
            finally:
                if raised and not self.stopping:
                    self._lowat(1)
            handoff.back()

    # -- TUN → network ----------------------------------------------------------------------

    def _send(self, data: bytes, writable: select.poll) -> None:
        """Write all of `data` to the stream (the only writer), waiting while it is full.
        In the one-thread layouts `writable` also waits for input while this thread reads
        the stream (`self.reading`), and reads it: a peer that stops reading while its own
        writes to us are stuck could otherwise never unblock us."""
        transport = self.io.transport
        send = transport.sock.send
        view = memoryview(data)
        while view:
            try:
                sent = send(view)
            except BlockingIOError:
                ready = self._wait(writable)
                if self.reading is not None and any(ev & select.POLLIN for _fd, ev in ready):
                    self._receive(self.reading)
                continue
            except OSError as exc:
                raise TransportError(f"TCP send failed: {exc.strerror}") from None
            view = view[sent:]

    def _serve(self, served: int, writable: select.poll) -> int:
        """Send the requested pings / exit notifications and the queued control packets;
        wake the trio task waiting for room. The requests served so far."""
        link, transport, control = self.link, self.io.transport, self.control
        if link.requests != served:  # pings / exit notifications to seal
            served = link.requests
            tx = link.tx
            extra = link.requested_packets(tx, link.clock()) if tx is not None else []
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
                raise Stopped  # the trio run is gone
        return served

    def _seal(self, batch: list[bytes], writable: select.poll) -> None:
        """Packets read from the TUN: sealed, framed and written to the stream."""
        tx = self.link.tx_or_drop(len(batch))
        if tx is None:
            return
        out = tx.encrypt(batch, self.link.clock())
        if out:
            self._send(_frame(out), writable)
            self.io.transport.tx_packets += len(out)

    def down(self) -> None:
        """TUN → stream, in its own thread (`TCPPathIO.split`); also the stream's only
        writer of control packets, pings and exit notifications."""
        transport = self.io.transport
        tun = self.io.tun
        tun_readable = self._poller(tun.fd, select.POLLIN, kick=True)
        writable = self._poller(transport.sock.fileno(), select.POLLOUT)
        served = 0  # link.requests already served
        rxc = self.io.rx
        lone = False  # the last wait was idle: read one packet, then wait again at once
        while not self.stopping:
            served = self._serve(served, writable)
            batch = tun.read_nowait(1 if lone else 0)
            if batch is None:
                return  # the device was closed
            if not batch:
                self.down_waits += 1
                self._wait(tun_readable)
                lone = True
                continue
            self._seal(batch, writable)
            if lone:  # a kick (control, a ping to send) also ends this wait
                self.down_waits += 1
                lone = not self._wait_after_lone(tun_readable)
            else:
                wait = coalesce.tun_linger_after(rxc, batch, tun.max_batch)
                if wait:
                    coalesce.linger(wait)  # bounded

    # -- both directions in one thread (the adaptive and one-thread layouts) ----------------

    def both(self) -> None:
        """Stream → TUN and TUN → stream in one thread; the stream's only writer.

        Each turn serves the side(s) known to have input, as `fastpath`'s `both` does; a read
        of `HANDOFF_BYTES` or more (adaptive layout) hands the reading side to `bulk` until
        that gives it back."""
        io = self.io
        tun = io.tun
        sock_fd, tun_fd = io.transport.sock.fileno(), tun.fd
        readable, without_socket, back_fd = self._one_thread_pollers(sock_fd, tun_fd)
        tun_writable = self._poller(tun_fd, select.POLLOUT)
        writable = self._poller(sock_fd, select.POLLOUT)
        # while this thread reads the stream, a full send buffer also waits for input
        writable_or_input = self._poller(sock_fd, select.POLLOUT | select.POLLIN)
        handoff = self.handoff
        rxc = io.rx  # see datachannel/coalesce.py
        served = 0
        up = down = True  # worth reading: readable at the last wait, or read something since
        own = True  # this thread reads the stream (false while handed over)
        down_limit = 1
        fresh = False  # this turn follows an idle wait
        while not self.stopping:
            self.reading = tun_writable if own else None
            out = writable_or_input if own else writable
            served = self._serve(served, out)
            if up:
                n = self._receive(tun_writable)
                up = n > 0
                if handoff is not None and n >= HANDOFF_BYTES:
                    self._ungather()  # the bulk thread sets its own SO_RCVLOWAT
                    own = up = False
                    self.reading, out = None, writable
                    handoff.give()
            if down:
                batch = tun.read_nowait(down_limit)
                if batch is None:
                    return  # the device was closed
                down = bool(batch)
                if down:
                    down_limit = 0
                    self._seal(batch, out)
                    if own and not self.gathering:
                        self._gather(batch)
                    wait = coalesce.tun_linger_after(rxc, batch, tun.max_batch)
                    if wait:
                        coalesce.linger(wait)  # opt-in (coalesce.py); bounded
            poller = readable if own else without_socket
            if not (up or down):
                down_limit = 1
                self.down_waits += 1
                ready = self._wait_gathering(poller, sock_fd)
                fresh = True
            elif fresh and not (up and down):
                # one side's input alone after an idle wait (a ping or its reply): wait again
                # at once instead of a `poll(0)` and a read to EAGAIN (see fastpath's `both`)
                self.down_waits += 1
                start = time.monotonic()
                ready = self._wait_gathering(poller, sock_fd)
                if time.monotonic() - start < LONE_GAP:
                    fresh = False  # input was queued: busy, read whole batches
                else:
                    down_limit = 1
                up = down = False
            elif not (up and down):
                # one side is busy: look (without waiting) whether the other has input
                fresh = False
                ready = self._ready(poller.poll(0))
            else:
                fresh = False
                continue
            for fd, _event in ready:
                if fd == back_fd:
                    drain(fd)  # the bulk thread gave the stream back
                    own = True
                up = up or (own and fd in (sock_fd, back_fd))
                down = down or fd == tun_fd


class TCPThreadPlane(ThreadedPlane[TCPPathIO, _Threads]):
    """The data plane of a TCP session as data threads (module docstring); a
    `plane.DataPlane`."""

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
