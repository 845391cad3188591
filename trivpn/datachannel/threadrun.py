"""Running data-plane threads under trio: what `fastpath` (UDP) and `tcpfast` (TCP) share.

Why one place: the start/stop protocol is where the data planes' structured-concurrency
guarantees live; two copies of it would drift apart.

Theory of operation. `ThreadedPlane._run_threads` makes two pipes for one run:

* the **stop pipe**, written once when the run ends. Every thread polls it next to its own
  fds (`DataThreads._poller`) and leaves its loop (`Stopped`) when it becomes readable, or
  when it finds the `stopping` flag set after any wait;
* the **kick pipe** (both ends non-blocking), written by `ThreadedPlane.kick` when the
  service (or a trio task of the plane) has something for the sending thread; the thread
  only drains it (`drain`) and looks at its work on the next turn.

The threads run in `trio.to_thread.run_sync` calls on a limiter of the plane's own, so they
never wait behind other `to_thread` users. A thread that raises ends its call with that
exception: `stop` sets the flag, writes the stop pipe and cancels the nursery, so the
error reaches the session like any layer's. A thread that returns (its device closed, the
trio run gone) stops the others the same way. Cancellation reaches the `stopper` task,
whose `finally` does the same. The calls are never abandoned on cancel, so `run` returns
only after every thread has: the socket and the TUN are never closed under a running
thread, and the pipes are closed only then — after `kick` forgot the write end, so a kick
that comes later never writes to a reused fd.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, TypeVarTuple

import trio

from trivpn.datachannel.link import DataLink
from trivpn.errors import ConfigError, LocalProtocolError

log = logging.getLogger("trivpn.datachannel")

__all__ = [
    "DATA_THREADS_ENV", "Body", "DataThreads", "Handoff", "PathIO", "Stopped", "ThreadedPlane",
    "adaptive_from_env", "data_threads_from_env", "drain", "split_from_env",
]

#: Environment variable choosing the thread planes' layout when the caller does not: "1"
#: one thread for both directions, "2" one thread per direction, anything else adaptive
#: (one thread that hands bulk input to a second; `fastpath`, `tcpfast`).
DATA_THREADS_ENV = "TRIVPN_DATA_THREADS"


def data_threads_from_env() -> str:
    """TRIVPN_DATA_THREADS: "1", "2", or "" (unset: adaptive); anything else is a
    `ConfigError`, so that a mistyped value does not quietly pick another layout."""
    value = os.environ.get(DATA_THREADS_ENV, "").strip()
    if value not in ("", "1", "2"):
        raise ConfigError(f"{DATA_THREADS_ENV}={value!r}: expected 1 (one thread), 2 (one per "
                          "direction) or unset (adaptive)")
    return value


def split_from_env() -> bool:
    """The default of a path IO's `split`: one fixed thread per direction."""
    return data_threads_from_env() == "2"


def adaptive_from_env() -> bool:
    """The default of a path IO's `adaptive`: hand bulk input to a second thread."""
    return data_threads_from_env() != "1"


class Stopped(Exception):
    """The stop pipe became readable: leave the thread loop."""


def drain(fd: int) -> None:
    """Empty the non-blocking kick pipe of the kicks written so far."""
    try:
        os.read(fd, 4096)
    except BlockingIOError:
        pass


class Handoff:
    """Adaptive layouts (`fastpath`, `tcpfast`): the two pipes that hand the socket's
    reading side over between the first thread and the bulk thread
    (`give`: first thread → bulk thread, `back`: bulk thread → first thread). Both are
    written once per hand-over and drained by their reader, so a hand-over is never lost
    and the two never overlap."""

    __slots__ = ("give_r", "give_w", "back_r", "back_w", "given")

    def __init__(self) -> None:
        self.give_r, self.give_w = os.pipe()
        self.back_r, self.back_w = os.pipe()
        for fd in (self.give_r, self.give_w, self.back_r, self.back_w):
            os.set_blocking(fd, False)
        self.given = 0  # hand-overs to the bulk thread so far (tests, logs)

    def give(self) -> None:
        """First thread: stop reading the socket, then call this."""
        self.given += 1
        os.write(self.give_w, b"g")

    def back(self) -> None:
        """Bulk thread: stop reading the socket, then call this."""
        os.write(self.back_w, b"b")

    def close(self) -> None:
        for fd in (self.give_r, self.give_w, self.back_r, self.back_w):
            os.close(fd)


#: a thread body and the name its thread gets
Body = tuple[Callable[[], None], str]


class _Socket(Protocol):
    @property
    def sock(self) -> socket.socket: ...


class _Device(Protocol):
    @property
    def fd(self) -> int: ...


class PathIO(Protocol):
    """What a data plane's threads work on (`fastpath.FastPathIO`, `tcpfast.TCPPathIO`)."""

    @property
    def transport(self) -> _Socket: ...

    @property
    def tun(self) -> _Device: ...

    @property
    def to_muxer(self) -> trio.MemorySendChannel[list[bytes]]: ...


IO = TypeVar("IO", bound=PathIO)
Ts = TypeVarTuple("Ts")
#: A wait after a lone packet that returns sooner than this found input already queued: the
#: thread goes back to reading whole batches (`DataThreads._wait_after_lone`).
LONE_GAP = 0.0002


class DataThreads(Generic[IO]):
    """What every data-plane thread shares: the link, the IO, the pipes' read ends, the stop
    flag and the way to hand what is not data to the muxer. Subclasses add the bodies."""

    def __init__(self, link: DataLink, io: IO, stop_fd: int, kick_fd: int) -> None:
        self.link = link
        self.io = io
        self.stop_fd = stop_fd
        self.kick_fd = kick_fd
        self.stopping = False
        self.token = trio.lowlevel.current_trio_token()
        self.control_dropped = 0  # written in the trio thread (`_deliver`)
        #: the adaptive layout's hand-over pipes (set by subclasses that run it)
        self.handoff: Handoff | None = None

    def bodies(self) -> Sequence[Body]:
        """The thread(s) to run."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the threads used beyond the plane's pipes; runs after they all
        returned."""
        if self.handoff is not None:
            log.debug("data plane: reading side handed to the bulk thread %d times",
                      self.handoff.given)
            self.handoff.close()

    def _one_thread_pollers(self, sock_fd: int, tun_fd: int) -> tuple[select.poll, select.poll, int]:
        """The waits of the thread that moves both directions: (the socket, the TUN and the
        kick pipe; what to poll instead while the bulk thread has the socket, with the
        hand-back pipe; that pipe's fd, -1 without a hand-over)."""
        readable = self._poller(sock_fd, select.POLLIN, kick=True)
        readable.register(tun_fd, select.POLLIN)
        if self.handoff is None:
            return readable, readable, -1
        without_socket = self._poller(tun_fd, select.POLLIN, kick=True)
        without_socket.register(self.handoff.back_r, select.POLLIN)
        return readable, without_socket, self.handoff.back_r

    def _poller(self, fd: int, event: int, *, kick: bool = False) -> select.poll:
        poller = select.poll()
        poller.register(fd, event)
        poller.register(self.stop_fd, select.POLLIN)
        if kick:
            poller.register(self.kick_fd, select.POLLIN)
        return poller

    def _ready(self, ready: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """What a `poll` found: `Stopped` when asked to stop; kicks drained (the sending
        loop serves the requests on its next turn)."""
        for fd, _event in ready:
            if fd == self.stop_fd:
                raise Stopped
            if fd == self.kick_fd:
                drain(fd)
        if self.stopping:
            raise Stopped
        return ready

    def _wait(self, poller: select.poll) -> list[tuple[int, int]]:
        """Block (GIL released) until an fd is ready; `Stopped` when asked to stop."""
        return self._ready(poller.poll())

    def _wait_after_lone(self, poller: select.poll) -> bool:
        """After the lone packet that followed an idle wait, wait again at once instead of
        first reading the fd dry: with sporadic traffic (a ping) that read finds nothing and
        is one more cold system call before the thread sleeps, while the process it just
        woke may be waiting for this core. True if the wait returned at once (input was
        already queued: read whole batches next). Timed on the machine's clock, not the
        link's: a session may inject its own time, and this asks how long the thread slept."""
        start = time.monotonic()
        self._wait(poller)
        return time.monotonic() - start < LONE_GAP

    def _deliver(self, batch: list[bytes]) -> None:
        """Runs in the trio thread (run_sync_soon): must never raise or block."""
        try:
            self.io.to_muxer.send_nowait(batch)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.control_dropped += len(batch)

    def _to_trio(self, fn: Callable[[*Ts], object], *args: *Ts) -> bool:
        """Run `fn(*args)` in the trio thread soon, never blocking; False once the trio run
        is gone (the thread should return)."""
        try:
            self.token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def guarded(self, body: Callable[[], None]) -> Callable[[], None]:
        """`body` as a thread: a stop, or a device closed under it, ends it quietly; any
        other error is raised unless the session is already being torn down."""

        def run() -> None:
            try:
                body()
            except (Stopped, trio.ClosedResourceError):
                return
            except Exception:
                if self.stopping:
                    return  # the session is being torn down; what failed no longer matters
                raise

        return run


T = TypeVar("T", bound=DataThreads[Any])


class ThreadedPlane(Generic[IO, T]):
    """A `plane.DataPlane` whose work runs in `DataThreads` (module docstring); subclasses
    say which (`_make_threads`) and may add trio tasks (`_tasks`)."""

    def __init__(
        self,
        io: IO,
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
        self.threads: T | None = None

    def kick(self) -> None:
        if self._kick_w is not None:
            try:
                os.write(self._kick_w, b"k")
            except BlockingIOError:
                pass  # the pipe is full of kicks the thread has not drained yet

    def _make_threads(self, link: DataLink, stop_fd: int, kick_fd: int) -> T:
        raise NotImplementedError

    def _tasks(self, threads: T, stop: Callable[[], None]) -> list[Callable[[], Awaitable[None]]]:
        """Trio tasks to run next to the threads; `stop` ends the run."""
        return []

    async def run(self, link: DataLink) -> None:
        """Run the data-plane thread(s) until cancelled, a thread fails, or the TUN closes."""
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
        threads = self.threads = self._make_threads(link, stop_r, kick_r)
        self._kick_w = kick_w
        bodies = threads.bodies()
        limiter = trio.CapacityLimiter(len(bodies))  # our own: never waits behind other to_thread users

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
                    for task in self._tasks(threads, stop):
                        nursery.start_soon(task)
                    for body, name in bodies:
                        nursery.start_soon(in_thread, threads.guarded(body), name)
        finally:
            self._kick_w = None  # before the close: a later kick must not hit a reused fd
            for fd in (stop_r, stop_w, kick_r, kick_w):
                os.close(fd)
            threads.close()
            if threads.control_dropped:
                log.debug(
                    "data plane: %d control packets dropped (muxer busy)", threads.control_dropped
                )
