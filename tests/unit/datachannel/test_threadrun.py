"""The start/stop protocol both data-plane thread layouts share (`datachannel.threadrun`).

Bodies here wait on real (never written) socketpairs, so only the stop pipe, the kick pipe or
an error can end them. Waits are bounded by `trio.fail_after`; what a thread does is polled.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import trio
from helpers.waiting import until

from trivpn.datachannel.link import DataLink
from trivpn.datachannel.threadrun import Body, DataThreads, Stopped, ThreadedPlane
from trivpn.workers.manager import primary_error

LIMIT = 10.0


@dataclass
class _Transport:
    sock: socket.socket


@dataclass
class _Tun:
    fd: int


@dataclass
class _IO:
    transport: _Transport
    tun: _Tun
    to_muxer: trio.MemorySendChannel[list[bytes]]


class _Threads(DataThreads[_IO]):
    def __init__(self, link: DataLink, io: _IO, stop_fd: int, kick_fd: int) -> None:
        super().__init__(link, io, stop_fd, kick_fd)
        self.fail = False  # set by the test: the next wake-up of `failing` raises
        self.kicks = 0
        self.ended: list[str] = []

    def bodies(self) -> list[Body]:
        return [(self.waiting, "test threadrun waiting"), (self.failing, "test threadrun failing")]

    def _wake(self, poller: select.poll) -> None:
        """`_wait`, bounded: a stop that never comes fails the test instead of hanging it."""
        if not self._ready(poller.poll(int(LIMIT * 3000))):
            raise AssertionError("no stop, no kick")

    def waiting(self) -> None:
        poller = self._poller(self.io.transport.sock.fileno(), select.POLLIN)
        try:
            self._wake(poller)  # nothing is ever written to this socket
        except Stopped:
            self.ended.append("waiting")
            raise

    def failing(self) -> None:
        poller = self._poller(self.io.tun.fd, select.POLLIN, kick=True)
        try:
            for _ in range(3):
                self._wake(poller)  # only a kick (or the stop pipe) wakes it
                self.kicks += 1
                if self.fail:
                    raise ValueError("the body failed")
        except Stopped:
            self.ended.append("failing")
            raise


class _Plane(ThreadedPlane[_IO, _Threads]):
    def _make_threads(self, link: DataLink, stop_fd: int, kick_fd: int) -> _Threads:
        return _Threads(link, self.io, stop_fd, kick_fd)


@pytest.fixture
def plane() -> Iterator[_Plane]:
    pairs = [socket.socketpair() for _ in range(2)]
    for a, _b in pairs:
        a.setblocking(False)
    to_muxer, _from = trio.open_memory_channel[list[bytes]](1)
    yield _Plane(_IO(_Transport(pairs[0][0]), _Tun(pairs[1][0].fileno()), to_muxer))
    for a, b in pairs:
        a.close()
        b.close()


def _alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("test threadrun")]


async def test_cancel_stops_the_threads_before_run_returns(plane: _Plane) -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(plane.run, DataLink(time.monotonic))
            await until(lambda: len(_alive()) == 2, "both threads started")
            nursery.cancel_scope.cancel()
    threads = plane.threads
    assert threads is not None and threads.stopping
    assert sorted(threads.ended) == ["failing", "waiting"]  # both stopped before run returned
    assert not _alive()
    assert plane._kick_w is None  # the pipes are closed: a late kick must not write anywhere
    plane.kick()


async def test_a_kick_wakes_a_thread_and_its_error_ends_the_run(plane: _Plane) -> None:
    with pytest.raises(BaseException) as info:  # noqa: PT011 - checked below
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(plane.run, DataLink(time.monotonic))
                await until(lambda: plane.threads is not None, "threads made")
                threads = plane.threads
                assert threads is not None
                plane.kick()
                await until(lambda: threads.kicks == 1, "the kick woke the thread")
                threads.fail = True
                plane.kick()
                await trio.sleep_forever()  # the failing thread ends the run
    assert isinstance(primary_error(info.value), ValueError), info.value
    assert plane.threads is not None and plane.threads.ended == ["waiting"]  # stopped, not left
