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

A TCP stream has one writer and one reader, so each thread owns one direction of the socket
and one direction of the crypto state (`Encryptor` / `Decryptor`, see `datachannel.keys` for
why no lock is needed). Time comes from the link's clock.

Structured concurrency holds as in `fastpath`: a thread's exception comes out of
`trio.to_thread.run_sync` and cancels the session; cancellation (or one side ending) sets a
flag and writes a stop pipe both threads poll next to their fd, and `run` returns only after
both threads did, so the socket (closed by the client after the session) and the TUN are
never closed under a running thread.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from trivpn.datachannel import coalesce
from trivpn.datachannel.coalesce import RxCoalesce, default_rx_coalesce
from trivpn.datachannel.link import PEER_EXITED, DataLink
from trivpn.errors import LocalProtocolError, SessionRestart
from trivpn.networkio.framing import MAX_FRAME, FramingError, frame_packets
from trivpn.networkio.splitter import FrameSplitter
from trivpn.networkio.transport import StreamCorrupted, TransportError

if TYPE_CHECKING:
    from trivpn.networkio.transport import TCPTransport
    from trivpn.tun.linux import LinuxTun

log = logging.getLogger("trivpn.datachannel")

__all__ = ["CONTROL_QUEUE", "TCPPathIO", "TCPThreadPlane"]

#: Batches of control packets the down thread may have queued before the muxer waits.
CONTROL_QUEUE = 64


class _Stopped(Exception):
    """The stop pipe became readable: leave the thread loop."""


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


class _Threads:
    """The two thread bodies and what they share (one writer per attribute)."""

    def __init__(self, link: DataLink, io: TCPPathIO, stop_fd: int, kick_fd: int) -> None:
        self.link = link
        self.io = io
        self.stop_fd = stop_fd
        self.kick_fd = kick_fd
        self.stopping = False
        self.token = trio.lowlevel.current_trio_token()
        #: control batches from the muxer (appended by the trio task, popped by down)
        self.control: collections.deque[list[bytes]] = collections.deque()
        #: set by the trio task while it waits for room in `control`; cleared by down
        self.want_room = False
        self.room = trio.Event()
        self.control_dropped = 0  # written in the trio thread (`_deliver`)

    def _poller(self, fd: int, event: int, *, kick: bool = False) -> select.poll:
        poller = select.poll()
        poller.register(fd, event)
        poller.register(self.stop_fd, select.POLLIN)
        if kick:
            poller.register(self.kick_fd, select.POLLIN)
        return poller

    def _wait_for(self, poller: select.poll, ms: int) -> bool:
        """`_wait` with a timeout; False if it expired with nothing ready."""
        ready = poller.poll(ms)
        for fd, _event in ready:
            if fd == self.stop_fd:
                raise _Stopped
        if self.stopping:
            raise _Stopped
        return bool(ready)

    def _wait(self, poller: select.poll) -> None:
        """Block (GIL released) until an fd is ready; `_Stopped` when asked to stop."""
        for fd, _event in poller.poll():
            if fd == self.stop_fd:
                raise _Stopped
            if fd == self.kick_fd:
                try:
                    os.read(fd, 4096)  # the down loop serves what was asked on its next turn
                except BlockingIOError:
                    pass
        if self.stopping:
            raise _Stopped

    # -- network → TUN ----------------------------------------------------------------------

    def _deliver(self, batch: list[bytes]) -> None:
        """Runs in the trio thread (run_sync_soon): must never raise or block."""
        try:
            self.io.to_muxer.send_nowait(batch)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.control_dropped += len(batch)

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
        rxc = self.io.rx  # receive coalescing (datachannel/coalesce.py)
        raised = False  # SO_RCVLOWAT is up: the kernel wakes us once rxc.tcp_lowat bytes wait
        try:
            while not self.stopping:
                try:
                    n = recv_into(splitter.space())
                except BlockingIOError:
                    if raised and not self._wait_for(readable, rxc.tcp_wait_ms):
                        # the stream slowed down: back to waking at the first byte
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
                        raised = False
                    elif not raised:
                        self._wait(readable)
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
                if control:
                    try:
                        self.token.run_sync_soon(self._deliver, control)
                    except trio.RunFinishedError:
                        return
                if not data:
                    continue
                rx = link.rx
                if rx is None:
                    link.dropped_up += len(data)
                    continue
                packets = rx.decrypt(data, now_fn())
                if packets:
                    i = tun.write_nowait(packets)
                    while i < len(packets):
                        self._wait(tun_writable)
                        i = tun.write_nowait(packets, i)
                if rx.peer_exited:
                    raise SessionRestart(PEER_EXITED)
        except (_Stopped, trio.ClosedResourceError):
            return
        except Exception:
            if self.stopping:
                return  # the session is being torn down; what failed no longer matters
            raise

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
        try:
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
                    try:
                        self.token.run_sync_soon(self.room.set)
                    except trio.RunFinishedError:
                        return
                batch = tun.read_nowait()
                if batch is None:
                    return  # the device was closed
                if not batch:
                    self._wait(tun_readable)
                    continue
                tx = link.tx
                if tx is None:
                    link.dropped_down += len(batch)
                    continue
                out = tx.encrypt(batch, now_fn())
                if out:
                    self._send(_frame(out), writable)
                    transport.tx_packets += len(out)
                if len(batch) >= rxc.tun_min and rxc.tun_linger:
                    coalesce.linger(rxc.tun_linger)  # bounded
        except (_Stopped, trio.ClosedResourceError):
            return
        except Exception:
            if self.stopping:
                return
            raise


class TCPThreadPlane:
    """The data plane of a TCP session as two threads (module docstring); a `plane.DataPlane`."""

    def __init__(
        self,
        io: TCPPathIO,
        *,
        from_mux: trio.MemoryReceiveChannel[list[bytes]] | None = None,
        to_net: trio.MemorySendChannel[list[bytes]] | None = None,
    ) -> None:
        """`from_mux` / `to_net`: the stack's data channels to and from the muxer and
        networkio; closed at once, as the threads use the socket and the TUN themselves."""
        self.io = io
        self._unused = [c for c in (from_mux, to_net) if c is not None]
        self._kick_w: int | None = None
        #: the running threads' shared state (counters), for tests and logs
        self.threads: _Threads | None = None

    def kick(self) -> None:
        if self._kick_w is not None:
            try:
                os.write(self._kick_w, b"k")
            except BlockingIOError:
                pass  # the pipe is full of kicks the down thread has not drained yet

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

    async def run(self, link: DataLink) -> None:
        """Run both threads until cancelled, a thread fails, or the TUN closes."""
        for channel in self._unused:
            await channel.aclose()
        io = self.io
        if os.get_blocking(io.tun.fd) or io.transport.sock.getblocking():
            raise LocalProtocolError("the data-plane threads need a non-blocking TUN fd and socket")
        stop_r, stop_w = os.pipe()
        kick_r, kick_w = os.pipe()
        os.set_blocking(kick_r, False)
        os.set_blocking(kick_w, False)
        threads = self.threads = _Threads(link, io, stop_r, kick_r)
        self._kick_w = kick_w
        limiter = trio.CapacityLimiter(2)  # our own: never waits behind other to_thread users

        def stop() -> None:
            if not threads.stopping:
                threads.stopping = True
                os.write(stop_w, b"x")
                nursery.cancel_scope.cancel()

        async def in_thread(body: Callable[[], None], name: str) -> None:
            try:
                await trio.to_thread.run_sync(body, thread_name=name, limiter=limiter)
            finally:
                stop()  # one side ended (or failed): the other must not run on alone

        async def stopper() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop()

        try:
            async with io.to_muxer:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stopper)
                    nursery.start_soon(self._control_writer, threads, stop)
                    nursery.start_soon(in_thread, threads.up, "trivpn tcp data up")
                    nursery.start_soon(in_thread, threads.down, "trivpn tcp data down")
        finally:
            self._kick_w = None  # before the close: a later kick must not hit a reused fd
            for fd in (stop_r, stop_w, kick_r, kick_w):
                os.close(fd)
            if threads.control_dropped:
                log.debug("data plane: %d control packets dropped (muxer busy)", threads.control_dropped)
