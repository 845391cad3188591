"""Data-plane threads: the hot path of a UDP session over a kernel TUN, off the event loop.

Why: a packet that wakes a trio task pays for the run loop (epoll_wait, the wake-up and a
scheduler pass, ~110 µs more than a plain blocking thread for a UDP ping-pong on this
machine) and every task hop after that (~15 µs cold). An idle ping crosses the client twice,
so on the trio path the client alone added ≈ 0.4–0.5 ms to a 0.3 ms round trip. Two plain
threads that block in `poll` answer as fast as a C program's system calls allow, and they
let the kernel work of one direction (the TUN write, the GSO send) run on the second core
while the other direction runs Python.

Theory of operation. `ThreadPlane.run` (a `plane.DataPlane`) starts two threads with
`trio.to_thread.run_sync`:

* **up**: drain the UDP socket (`UDPTransport.recv_nowait`), keep the P_DATA packets, open
  them with the session's `core.Decryptor`, write the plaintext to the TUN
  (`LinuxTun.write_nowait`). Every other datagram (control, resets, garbage) is handed to
  the packet muxer's input channel through `TrioToken.run_sync_soon`: it never blocks, and a
  full channel drops the batch exactly like a congested network would (the reliable layer
  retransmits). The thread only classifies by opcode; the muxer checks everything else.
* **down**: drain the TUN (`LinuxTun.read_nowait`), seal with the session's `core.Encryptor`,
  send with `UDPTransport.send_nowait` (GSO runs). It also seals and sends the keepalive
  pings and exit notifications the service requests (`DataLink.requests`): the service
  writes a byte to a *kick pipe* the down thread polls next to the TUN fd.

No lock: each thread owns its direction's state (packet ids and tx counters; replay windows
and rx counters) and both read the immutable key table the service swaps atomically on a
key install (`keys.KeySlot`). Time comes from the link's clock (`time.monotonic` unless the
session injects another), never from trio, so `now` means the same in both threads and in
the service's keepalive timer.

Low-latency mode (`FastPathIO.warm_for > 0`, `trivpn connect --low-latency`). On this
machine a thread that slept ~10 ms runs its next packet 10–20× slower than a warm one
(os.read + AES-GCM: ~80 µs instead of ~5 µs): caches, TLB and branch predictors were
refilled by others meanwhile. Merely waking up does not help; running the same code does.
So for `warm_for` seconds after the last data packet each thread wakes every `warm_every`
seconds and seals/opens a dummy packet with a private pair of cores under a random key
(never on the wire, never touching the session's keys or counters). That buys a lower idle
RTT for interactive traffic at the price of CPU while traffic is sporadic; once the tunnel
is silent for `warm_for`, the threads block as usual. Off by default.

Structured concurrency holds: a thread that raises ends its `to_thread.run_sync` call with
that exception, which cancels the session like any layer's error. Cancellation sets a flag
and writes a byte to a stop pipe that both threads poll next to their fd, and `run` waits
for both to return before it returns — so the socket and the TUN are never closed under a
running thread. A thread that finds its device closed ends the data plane.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from trivpn.datachannel.core import DataChannel
from trivpn.datachannel.keys import DataConfig
from trivpn.datachannel.link import PEER_EXITED, DataLink
from trivpn.datachannel.sender import Encryptor
from trivpn.errors import LocalProtocolError, SessionRestart
from trivpn.networkio.transport import MAX_BATCH
from trivpn.wire import DATA_OPCODES, P_OPCODE_SHIFT

if TYPE_CHECKING:
    from trivpn.networkio.transport import UDPTransport
    from trivpn.tun.linux import LinuxTun

log = logging.getLogger("trivpn.datachannel")



class _Stopped(Exception):
    """The stop pipe became readable: leave the thread loop."""


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


#: The dummy payload low-latency mode seals and opens.
WARM_PACKET = bytes(100)
#: Renew the dummy cores long before their packet ids could run out.
WARM_PID_RENEW = 1 << 30


class _Warmer:
    """A private client/server pair of data-channel cores under a random key: running them
    keeps the code and data of the real seal/open path in the caches (low-latency mode)."""

    def __init__(self, config: DataConfig) -> None:
        key2 = os.urandom(256)
        pair: list[DataChannel] = []
        for is_server in (config.is_server, not config.is_server):
            core = DataChannel(
                cipher=config.cipher,
                is_server=is_server,
                peer_id=config.peer_id,
                compression=config.compression,
                auth=config.auth,
            )
            core.install_key(0, key2, 0.0)
            pair.append(core)
        self.tx, self.rx = pair
        self.sealed = 0

    def seal(self) -> list[bytes]:
        self.sealed += 1
        return self.tx.encrypt((WARM_PACKET,), 0.0)


def _drain(fd: int) -> None:
    try:
        os.read(fd, 4096)
    except BlockingIOError:
        pass


class _Side:
    """What one thread writes and others only read (tests, logs, the other thread)."""

    __slots__ = ("warm_until", "touches", "idle_waits")

    def __init__(self) -> None:
        #: low-latency mode: keep touching the hot path until then
        self.warm_until = 0.0
        self.touches = 0  # warm-up steps run
        self.idle_waits = 0  # times the thread blocked with nothing to do


class _Threads:
    """The two thread bodies and what they share."""

    def __init__(self, link: DataLink, io: FastPathIO, stop_fd: int, kick_fd: int) -> None:
        self.link = link
        self.io = io
        self.stop_fd = stop_fd
        self.kick_fd = kick_fd
        self.stopping = False
        self.token = trio.lowlevel.current_trio_token()
        self.now = link.clock
        self.control_dropped = 0
        self.warm_for = io.warm_for
        self.warm_every_ms = max(1, round(io.warm_every * 1000))
        self.up_side = _Side()
        self.down_side = _Side()

    @property
    def touches(self) -> int:
        return self.up_side.touches + self.down_side.touches

    def _warm_until(self) -> float:
        # traffic either way keeps both threads warm: interactive traffic goes both ways
        return max(self.up_side.warm_until, self.down_side.warm_until)

    def _toucher(self, *, open_too: bool) -> Callable[[], None]:
        """One thread's low-latency warm-up step, with dummy cores of its own (made once the
        session has keys, renewed long before their packet ids run out)."""
        warmer: _Warmer | None = None

        def touch() -> None:
            nonlocal warmer
            if warmer is None or warmer.sealed >= WARM_PID_RENEW:
                tx = self.link.tx
                if tx is None:
                    return
                warmer = _Warmer(tx.config)
            wire = warmer.seal()
            if open_too:
                warmer.rx.decrypt(wire, 0.0)

        return touch

    def _ready(self, ready: list[tuple[int, int]]) -> None:
        for fd, _event in ready:
            if fd == self.stop_fd:
                raise _Stopped
            if fd == self.kick_fd:
                _drain(fd)  # the down loop serves the requests on its next turn
        if self.stopping:
            raise _Stopped

    def _idle(self, poller: select.poll, touch: Callable[[], None], side: _Side) -> None:
        """Wait for the fd. In low-latency mode, shortly after traffic, wake every
        `warm_every` to run `touch` instead of sleeping through."""
        while self.now() < self._warm_until():
            ready = poller.poll(self.warm_every_ms)
            if ready:
                self._ready(ready)
                return
            if self.stopping:
                raise _Stopped
            touch()
            side.touches += 1
        side.idle_waits += 1
        self._wait(poller)

    def _poller(self, fd: int, event: int, *, kick: bool = False) -> select.poll:
        poller = select.poll()
        poller.register(fd, event)
        poller.register(self.stop_fd, select.POLLIN)
        if kick:
            poller.register(self.kick_fd, select.POLLIN)
        return poller

    def _wait(self, poller: select.poll) -> None:
        """Block (GIL released) until an fd is ready; `_Stopped` when asked to stop."""
        self._ready(poller.poll())

    # -- network → TUN ----------------------------------------------------------------------

    def _deliver(self, batch: list[bytes]) -> None:
        """Runs in the trio thread (run_sync_soon): must never raise or block."""
        try:
            self.io.to_muxer.send_nowait(batch)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.control_dropped += len(batch)

    def up(self) -> None:
        transport = self.io.transport
        tun = self.io.tun
        link = self.link
        now_fn = self.now
        sock_readable = self._poller(transport.sock.fileno(), select.POLLIN)
        tun_writable = self._poller(tun.fd, select.POLLOUT)
        data_ops = DATA_OPCODES
        warm_for = self.warm_for
        touch = self._toucher(open_too=True)
        side = self.up_side
        limit = 1  # after an idle wait the first datagram goes through alone (see `down`)
        try:
            while not self.stopping:
                batch = transport.recv_nowait(limit)
                if not batch:
                    limit = 1
                    self._idle(sock_readable, touch, side)
                    continue
                limit = MAX_BATCH
                data: list[bytes] = []
                control: list[bytes] = []
                for d in batch:
                    (data if d and d[0] >> P_OPCODE_SHIFT in data_ops else control).append(d)
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
                now = now_fn()
                packets = rx.decrypt(data, now)
                if warm_for:
                    side.warm_until = now + warm_for
                if packets:
                    self._write_all(tun, packets, tun_writable)
                if rx.peer_exited:
                    raise SessionRestart(PEER_EXITED)
        except (_Stopped, trio.ClosedResourceError):
            return
        except Exception:
            if self.stopping:
                return  # the session is being torn down; what failed no longer matters
            raise

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

    def down(self) -> None:
        transport = self.io.transport
        tun = self.io.tun
        link = self.link
        now_fn = self.now
        tun_readable = self._poller(tun.fd, select.POLLIN, kick=True)
        sock_writable = self._poller(transport.sock.fileno(), select.POLLOUT, kick=True)
        warm_for = self.warm_for
        touch = self._toucher(open_too=False)
        side = self.down_side
        served = 0  # link.requests already served
        # After an idle wait the first packet goes out alone: draining to EAGAIN first would
        # put one more system call (~40 µs with cold caches, see docs/performance.md) in
        # front of a lone packet. Once busy, whole batches are read, and the thread only
        # waits again after a read that found nothing.
        limit = 1
        try:
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
                limit = 0  # the device's max_batch
                tx = link.tx
                if tx is None:
                    link.dropped_down += len(batch)
                    continue
                now = now_fn()
                out = tx.encrypt(batch, now)
                if warm_for:
                    side.warm_until = now + warm_for
                if out:
                    self._send_all(out, sock_writable)
        except (_Stopped, trio.ClosedResourceError):
            return
        except Exception:
            if self.stopping:
                return  # the session is being torn down; what failed no longer matters
            raise


class ThreadPlane:
    """The data plane as two threads (see the module docstring); a `plane.DataPlane`."""

    def __init__(
        self,
        io: FastPathIO,
        *,
        from_mux: trio.MemoryReceiveChannel[list[bytes]] | None = None,
        to_net: trio.MemorySendChannel[list[bytes]] | None = None,
    ) -> None:
        """`from_mux` / `to_net`: the session's data channels to and from the muxer and
        networkio, if it made them; closed at once, as the threads use the socket itself."""
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

    async def run(self, link: DataLink) -> None:
        """Run both data-plane threads until cancelled, a thread fails, or the TUN closes."""
        for channel in self._unused:
            await channel.aclose()
        io = self.io
        # The threads read before they poll: a blocking fd would park a thread in `read` where
        # the stop pipe cannot reach it, and the session could never end.
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

        async def in_thread(body: Callable[[], None], name: str) -> None:
            try:
                await trio.to_thread.run_sync(body, thread_name=name, limiter=limiter)
            finally:
                stop()  # one side ended (or failed): the other must not run on alone
                nursery.cancel_scope.cancel()

        async def stopper() -> None:
            try:
                await trio.sleep_forever()
            finally:
                stop()

        try:
            async with io.to_muxer:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(stopper)
                    nursery.start_soon(in_thread, threads.up, "trivpn data up")
                    nursery.start_soon(in_thread, threads.down, "trivpn data down")
        finally:
            self._kick_w = None  # before the close: a later kick must not hit a reused fd
            for fd in (stop_r, stop_w, kick_r, kick_w):
                os.close(fd)
            if threads.control_dropped:
                log.debug(
                    "data plane: %d control datagrams dropped (muxer busy)", threads.control_dropped
                )


__all__ = ["DATA_OPCODES", "FastPathIO", "ThreadPlane"]
