"""Data-plane thread(s): the hot path of a UDP session over a kernel TUN, off the event loop.

Why: a packet that wakes a trio task pays for the run loop (epoll_wait, the wake-up and a
scheduler pass, ~110 µs more than a plain blocking thread for a UDP ping-pong on this
machine) and every task hop after that (~15 µs cold). An idle ping crosses the client twice,
so on the trio path the client alone added ≈ 0.4–0.5 ms to a 0.3 ms round trip. A plain
thread that blocks in `poll` answers as fast as a C program's system calls allow.

Three layouts. By default (**adaptive**) one thread moves both directions while traffic
is sporadic, and hands the socket → TUN direction to a second thread while the socket
carries bulk data. One thread keeps the idle round trip short: a ping's reply finds the
data path warm in the thread (and core) that has just sent the request, where a thread per
direction wakes one that has been idle since the last packet (`bench rtt`, same run: one
thread 0.87-0.88x the two-thread idle RTT, 11 of 12 rounds lower). Under a bulk download
the second thread pays: the kernel work of one direction (a TUN write runs the local
stack's input, TCP's ACK processing and the segments it releases) overlaps with the other
direction's Python on the second core, where one thread alone lost 11 % of the download
(docs/performance.md, issue 16). The hand-over (`threadrun.Handoff`): the thread that reads a busy
batch of data datagrams (`HANDOFF_MIN`, `HANDOFF_BYTES`: data, not a run of ACKs) stops
polling the socket and wakes the bulk thread through a pipe; the bulk thread reads the
socket until it has been quiet for `HANDOFF_QUIET`, then wakes the first thread through a
second pipe and sleeps. Exactly one thread reads the socket at any time, and the pipes
order the hand-overs, so the receiving state is still used by one thread at a time.
`FastPathIO.split` (TRIVPN_DATA_THREADS=2) runs one fixed thread per direction instead,
and TRIVPN_DATA_THREADS=1 one thread that never hands over (for same-run benchmarks).

Theory of operation. `ThreadPlane.run` (a `plane.DataPlane`) starts the thread(s) with
`trio.to_thread.run_sync`. The steps (each thread of the split layout runs one of them in a
loop; `_Threads.both` runs both in turns, `_Threads.bulk` the first while handed over):

* **up** (`_up_batch`): drain the UDP socket (`UDPTransport.recv_nowait`), keep the P_DATA
  packets, open them with the session's `core.Decryptor`, write the plaintext to the TUN
  (`LinuxTun.write_nowait`). Every other datagram (control, resets, garbage) is handed to
  the packet muxer's input channel through `TrioToken.run_sync_soon`: it never blocks, and a
  full channel drops the batch exactly like a congested network would (the reliable layer
  retransmits). The thread only classifies by opcode; the muxer checks everything else.
* **down** (`_down_batch`): drain the TUN (`LinuxTun.read_nowait`), seal with the
  session's `core.Encryptor`, send with `UDPTransport.send_nowait` (GSO runs). It also
  seals and sends the keepalive pings and exit notifications the service requests
  (`DataLink.requests`): the service writes a byte to a *kick pipe* polled with the fds.

A thread waits in one `poll` on its fd(s), the kick pipe (the sending side) and the stop
pipe, only once a read found nothing; after a wait, the first packet goes through alone (a
drain to EAGAIN first would put one more cold system call in front of it), and after that
lone packet the thread (split layout) waits again at once rather than reading the fd dry
first: a wait that returns at once means input was queued, and whole batches follow.

No lock: the sending and receiving state are separate objects (packet ids and tx counters;
replay windows and rx counters), each used by one thread, and both read the immutable key
table the service swaps atomically on a key install (`keys.KeySlot`). Time comes from the
link's clock (`time.monotonic` unless the session injects another), never from trio, so
`now` means the same in the data plane and in the service's keepalive timer.

Low-latency mode (`FastPathIO.warm_for > 0`, `trivpn connect --low-latency`). On this
machine a thread that slept ~10 ms runs its next packet 10–20× slower than a warm one
(os.read + AES-GCM: ~80 µs instead of ~5 µs): caches, TLB and branch predictors were
refilled by others meanwhile. Merely waking up does not help; running the same code does.
So for `warm_for` seconds after the last data packet the thread(s) wake every `warm_every`
seconds and seal/open a dummy packet with a private pair of cores under a random key
(never on the wire, never touching the session's keys or counters). That buys a lower idle
RTT for interactive traffic at the price of CPU while traffic is sporadic; once the tunnel
is silent for `warm_for`, the threads block as usual. Off by default.

Structured concurrency holds (`threadrun`, shared with `tcpfast`): a thread that raises
ends its `to_thread.run_sync` call with that exception, which cancels the session like any
layer's error. Cancellation sets a flag and writes a byte to a stop pipe that every thread
polls next to its fds, and `run` waits for the thread(s) to return before it returns — so
the socket and the TUN are never closed under a running thread. A thread that finds its
device closed ends the data plane.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable, Sequence
from dataclasses import field
from typing import TYPE_CHECKING

import trio

from trivpn.datachannel import coalesce
from trivpn.datachannel.coalesce import RxCoalesce, default_rx_coalesce
from trivpn.datachannel.link import PEER_EXITED, DataLink
from trivpn.datachannel.sender import Encryptor
from trivpn.datachannel.threadrun import (
    DATA_THREADS_ENV,
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
from trivpn.datachannel.warmup import WARM_PID_RENEW, Warmer
from trivpn.errors import SessionRestart
from trivpn.networkio.transport import MAX_BATCH
from trivpn.records import dataclass
from trivpn.wire import DATA_OPCODES, P_OPCODE_SHIFT

if TYPE_CHECKING:
    from trivpn.networkio.transport import UDPTransport
    from trivpn.tun.linux import LinuxTun

#: Adaptive layout: a batch read from the socket of at least this many datagrams, holding
#: at least this many bytes (bulk data, not a run of ACKs), hands the socket to the bulk
#: thread ...
HANDOFF_MIN = 8
HANDOFF_BYTES = 8192
#: ... which gives it back once the socket has been quiet this long (seconds).
HANDOFF_QUIET = 0.02


def _is_bulk(batch: list[bytes]) -> bool:
    return len(batch) >= HANDOFF_MIN and sum(map(len, batch)) >= HANDOFF_BYTES


@dataclass(slots=True)
class FastPathIO:
    """What the data-plane threads work on: the session's UDP transport, the kernel TUN,
    and the packet muxer's input channel for everything that is not data."""

    transport: UDPTransport
    tun: LinuxTun
    to_muxer: trio.MemorySendChannel[list[bytes]]
    #: low-latency mode: keep the hot path warm this long after the last data packet (0: off)
    warm_for: float = 0.0
    #: ... by touching it this often
    warm_every: float = 0.001
    #: one fixed thread per direction (TRIVPN_DATA_THREADS=2) instead of one thread for
    #: both, which with `adaptive` hands bulk input to a second thread (module docstring)
    split: bool = field(default_factory=split_from_env)
    #: when not `split`: hand the socket to a second thread while it carries bulk data
    #: (the default; TRIVPN_DATA_THREADS=1 turns it off)
    adaptive: bool = field(default_factory=adaptive_from_env)
    #: receive coalescing under bulk traffic (the two-thread layout's `up` applies it)
    rx: RxCoalesce = field(default_factory=default_rx_coalesce)


class _Side:
    """What one thread writes and others only read (tests, logs, the other thread)."""

    __slots__ = ("warm_until", "touches", "idle_waits")

    def __init__(self) -> None:
        #: low-latency mode: keep touching the hot path until then
        self.warm_until = 0.0
        self.touches = 0  # warm-up steps run
        self.idle_waits = 0  # times the thread blocked with nothing to do


class _Threads(DataThreads[FastPathIO]):
    """The thread bodies and what they share beyond `DataThreads`."""

    def __init__(self, link: DataLink, io: FastPathIO, stop_fd: int, kick_fd: int) -> None:
        super().__init__(link, io, stop_fd, kick_fd)
        self.now = link.clock
        self.warm_for = io.warm_for
        self.warm_every_ms = max(1, round(io.warm_every * 1000))
        self.up_side = _Side()
        self.down_side = _Side()
        self.bulk_side = _Side()
        self.handoff = Handoff() if io.adaptive and not io.split else None

    def bodies(self) -> list[Body]:
        if self.io.split:
            return [(self.up, "trivpn data up"), (self.down, "trivpn data down")]
        if self.handoff is not None:
            return [(self.both, "trivpn data"), (self.bulk, "trivpn data bulk")]
        return [(self.both, "trivpn data")]

    @property
    def touches(self) -> int:
        return self.up_side.touches + self.down_side.touches

    def _warm_until(self) -> float:
        # traffic either way keeps both threads warm: interactive traffic goes both ways
        return max(self.up_side.warm_until, self.down_side.warm_until)

    def _toucher(self, *, open_too: bool) -> Callable[[], None]:
        """One thread's low-latency warm-up step, with dummy cores of its own (made once the
        session has keys, renewed long before their packet ids run out)."""
        warmer: Warmer | None = None

        def touch() -> None:
            nonlocal warmer
            if warmer is None or warmer.sealed >= WARM_PID_RENEW:
                tx = self.link.tx
                if tx is None:
                    return
                warmer = Warmer(tx.config)
            wire = warmer.seal()
            if open_too:
                warmer.rx.decrypt(wire, 0.0)

        return touch

    def _idle(
        self, poller: select.poll, touch: Callable[[], None], side: _Side
    ) -> list[tuple[int, int]]:
        """Wait for the fds; what became ready. In low-latency mode, shortly after traffic,
        wake every `warm_every` to run `touch` instead of sleeping through."""
        while self.now() < self._warm_until():
            ready = poller.poll(self.warm_every_ms)
            if ready:
                return self._ready(ready)
            if self.stopping:
                raise Stopped
            touch()
            side.touches += 1
        side.idle_waits += 1
        return self._wait(poller)

    def _after_lone(
        self, poller: select.poll, touch: Callable[[], None], side: _Side
    ) -> bool:
        """After the lone packet that followed an idle wait: wait again at once instead of
        first reading the fd dry. The read would find nothing when traffic is sporadic (a
        ping), and it is one more cold system call and Python turn before the thread
        sleeps — while the process it just woke (ping, after our TUN write) often waits
        for this core. True if the wait returned at once (input was already queued: busy,
        read whole batches next), False if it blocked (the next packet is lone again).
        Timed on the machine's clock, not the link's: a session may inject its own time,
        and this asks how long the thread really slept."""
        start = time.monotonic()
        self._idle(poller, touch, side)
        return time.monotonic() - start < LONE_GAP

    # -- network → TUN ----------------------------------------------------------------------

    def _up_batch(self, batch: list[bytes], tun_writable: select.poll, side: _Side) -> bool:
        """Datagrams read from the socket: control to the muxer, data decrypted to the TUN.
        False once the trio run is gone."""
        data: list[bytes] = []
        control: list[bytes] = []
        data_ops = DATA_OPCODES
        for d in batch:
            (data if d and d[0] >> P_OPCODE_SHIFT in data_ops else control).append(d)
        if control and not self._to_trio(self._deliver, control):
            return False
        if not data:
            return True
        link = self.link
        rx = link.rx_or_drop(len(data))
        if rx is None:
            return True
        now = self.now()
        packets = rx.decrypt(data, now)
        if self.warm_for:
            side.warm_until = now + self.warm_for
        if packets:
            self._write_all(self.io.tun, packets, tun_writable)
        if rx.peer_exited:
            raise SessionRestart(PEER_EXITED)
        return True

    def up(self) -> None:
        """Socket → TUN, in its own thread (`FastPathIO.split`)."""
        transport = self.io.transport
        sock_readable = self._poller(transport.sock.fileno(), select.POLLIN)
        tun_writable = self._poller(self.io.tun.fd, select.POLLOUT)
        touch = self._toucher(open_too=True)
        side = self.up_side
        limit = 1  # after an idle wait the first datagram goes through alone (see `down`)
        rxc = self.io.rx  # see datachannel/coalesce.py
        while not self.stopping:
            batch = transport.recv_nowait(limit)
            if not batch:
                limit = 1
                self._idle(sock_readable, touch, side)
                continue
            lone = limit == 1
            limit = MAX_BATCH
            if not self._up_batch(batch, tun_writable, side):
                return
            if lone:
                limit = MAX_BATCH if self._after_lone(sock_readable, touch, side) else 1
                continue
            wait = coalesce.udp_linger_after(rxc, batch, MAX_BATCH)
            if wait:
                coalesce.linger(wait)  # bounded: the stop pipe waits at most this long

    def _write_all(self, tun: LinuxTun, packets: Sequence[bytes], writable: select.poll) -> None:
        i = tun.write_nowait(packets)
        while i < len(packets):
            self._wait(writable)
            i = tun.write_nowait(packets, i)

    # -- TUN → network ----------------------------------------------------------------------

    def _send_all(self, out: list[bytes], writable: select.poll) -> None:
        transport = self.io.transport
        i = transport.send_nowait(out)
        while i < len(out):
            self._wait(writable)
            i = transport.send_nowait(out, i)

    def _serve(self, tx: Encryptor | None, writable: select.poll) -> None:
        if tx is not None:
            extra = self.link.requested_packets(tx, self.now())
            if extra:
                self._send_all(extra, writable)

    def _down_batch(self, batch: list[bytes], sock_writable: select.poll, side: _Side) -> None:
        """Packets read from the TUN: sealed and sent."""
        link = self.link
        tx = link.tx_or_drop(len(batch))
        if tx is None:
            return
        now = self.now()
        out = tx.encrypt(batch, now)
        if self.warm_for:
            side.warm_until = now + self.warm_for
        if out:
            self._send_all(out, sock_writable)

    def down(self) -> None:
        """TUN → socket, in its own thread (`FastPathIO.split`); also seals the requests."""
        tun = self.io.tun
        link = self.link
        tun_readable = self._poller(tun.fd, select.POLLIN, kick=True)
        sock_writable = self._poller(self.io.transport.sock.fileno(), select.POLLOUT, kick=True)
        touch = self._toucher(open_too=False)
        side = self.down_side
        served = 0  # link.requests already served
        rxc = self.io.rx
        # After an idle wait the first packet goes out alone: draining to EAGAIN first would
        # put one more system call (~40 µs with cold caches, see docs/performance.md) in
        # front of a lone packet. Once busy, whole batches are read, and the thread only
        # waits again after a read that found nothing.
        limit = 1
        while not self.stopping:
            if link.requests != served:  # pings / exit notifications to seal
                served = link.requests
                self._serve(link.tx, sock_writable)
            batch = tun.read_nowait(limit)
            if batch is None:
                return  # the device was closed
            if not batch:
                limit = 1
                self._idle(tun_readable, touch, side)
                continue
            lone = limit == 1
            limit = 0  # the device's max_batch
            self._down_batch(batch, sock_writable, side)
            if lone:
                limit = 0 if self._after_lone(tun_readable, touch, side) else 1
                continue
            wait = coalesce.tun_linger_after(rxc, batch, tun.max_batch)
            if wait:
                coalesce.linger(wait)  # bounded: the stop pipe waits at most this long

    # -- both directions in one thread (`FastPathIO.split=False`) ----------------------------

    def both(self) -> None:
        """Socket → TUN and TUN → socket in one thread; also seals the requests.

        Each turn serves the side(s) known to have input: one packet alone right after an
        idle wait, whole batches while busy. It waits again only once both sides read
        nothing; while one side is busy, a `poll` without timeout each turn notices input
        on the other. In the adaptive layout a busy batch from the socket hands the socket
        to `bulk` until that gives it back (module docstring)."""
        io = self.io
        transport, tun, link = io.transport, io.tun, self.link
        sock_fd, tun_fd = transport.sock.fileno(), tun.fd
        readable, without_socket, back_fd = self._one_thread_pollers(sock_fd, tun_fd)
        tun_writable = self._poller(tun_fd, select.POLLOUT)
        sock_writable = self._poller(sock_fd, select.POLLOUT, kick=True)
        handoff = self.handoff
        touch = self._toucher(open_too=True)
        side = self.up_side
        rxc = io.rx  # see datachannel/coalesce.py
        served = 0
        up = down = True  # worth reading: readable at the last wait, or read something since
        own = True  # this thread reads the socket (false while handed over)
        up_limit = down_limit = 1
        while not self.stopping:
            if link.requests != served:
                served = link.requests
                self._serve(link.tx, sock_writable)
            lone = up_limit == 1 and down_limit == 1  # the first turn after an idle wait
            if up:
                batch = transport.recv_nowait(up_limit)
                up = bool(batch)
                if up:
                    up_limit = MAX_BATCH
                    if not self._up_batch(batch, tun_writable, side):
                        return
                    if handoff is not None and _is_bulk(batch):
                        own = up = False
                        handoff.give()
            if down:
                packets = tun.read_nowait(down_limit)
                if packets is None:
                    return  # the device was closed
                down = bool(packets)
                if down:
                    down_limit = 0
                    self._down_batch(packets, sock_writable, side)
                    wait = coalesce.tun_linger_after(rxc, packets, tun.max_batch)
                    if wait:
                        coalesce.linger(wait)  # opt-in (coalesce.py); bounded
            poller = readable if own else without_socket
            if not (up or down):
                up_limit = down_limit = 1
                ready = self._idle(poller, touch, side)
            elif lone and not (up and down):
                # One packet alone after an idle wait (a ping or its reply): wait again at
                # once, as `_after_lone` does, instead of a `poll(0)` and a read to EAGAIN
                # first, while the process it woke may be waiting for this core. The wait
                # reports whatever is queued; if it returns at once, whole batches follow.
                start = time.monotonic()
                ready = self._idle(poller, touch, side)
                if time.monotonic() - start >= LONE_GAP:
                    up_limit = down_limit = 1  # sporadic: the next packet is lone again
                up = down = False
            elif not (up and down):
                # One side is busy: look (without waiting) whether the other has input,
                # or it would starve until the busy side runs dry (TCP's ACKs, say).
                ready = self._ready(poller.poll(0))
            else:
                continue
            for fd, _event in ready:
                if fd == back_fd:
                    drain(fd)  # the bulk thread gave the socket back
                    own = True
                up = up or (own and fd in (sock_fd, back_fd))
                down = down or fd == tun_fd

    def bulk(self) -> None:
        """Adaptive layout: socket → TUN while `both` has handed the socket over; gives it
        back after `HANDOFF_QUIET` without input, then sleeps until the next hand-over."""
        handoff = self.handoff
        assert handoff is not None  # noqa: S101  # only the adaptive layout runs this body
        transport = self.io.transport
        given = self._poller(handoff.give_r, select.POLLIN)
        sock_readable = self._poller(transport.sock.fileno(), select.POLLIN)
        tun_writable = self._poller(self.io.tun.fd, select.POLLOUT)
        side = self.bulk_side
        quiet_ms = max(1, round(HANDOFF_QUIET * 1000))
        rxc = self.io.rx  # see datachannel/coalesce.py
        while not self.stopping:
            side.idle_waits += 1
            self._wait(given)
            drain(handoff.give_r)
            while True:  # this thread has the socket
                batch = transport.recv_nowait(MAX_BATCH)
                if batch:
                    if not self._up_batch(batch, tun_writable, side):
                        return
                    wait = coalesce.udp_linger_after(rxc, batch, MAX_BATCH)
                    if wait:
                        coalesce.linger(wait)
                elif not self._ready(sock_readable.poll(quiet_ms)):
                    break  # quiet: give it back
            handoff.back()


class ThreadPlane(ThreadedPlane[FastPathIO, _Threads]):
    """The data plane as one thread that hands bulk input to a second (adaptive), one
    thread, or one per direction (see the module docstring); a `plane.DataPlane`."""

    def _make_threads(self, link: DataLink, stop_fd: int, kick_fd: int) -> _Threads:
        return _Threads(link, self.io, stop_fd, kick_fd)


__all__ = ["DATA_OPCODES", "DATA_THREADS_ENV", "FastPathIO", "ThreadPlane"]
