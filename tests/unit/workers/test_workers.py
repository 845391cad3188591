"""The workers manager: one failure cancels every layer; cleanups always run."""

from __future__ import annotations

import os
import signal
import time

import pytest
import trio
import trio.testing

from trivpn.workers.driver import CoreTimer, Outbox
from trivpn.workers.manager import ServiceFailed, WorkersManager, primary_error


async def test_failure_in_one_service_cancels_the_others_and_cleans_up() -> None:
    cleaned: list[str] = []
    cancelled: list[str] = []
    manager = WorkersManager()
    manager.add_cleanup(lambda: cleaned.append("tun"))
    manager.add_cleanup(lambda: cleaned.append("routes"))

    async def forever(name: str) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(name)

    async def broken() -> None:
        await trio.sleep(0.01)
        raise ValueError("boom")

    async def setup(m: WorkersManager) -> None:
        m.start_service("a", forever, "a")
        m.start_service("b", forever, "b")
        m.start_service("datachannel", broken)

    with pytest.raises(BaseExceptionGroup) as info:
        await manager.run(setup)
    err = info.value.exceptions[0]
    assert isinstance(err, ServiceFailed) and err.service == "datachannel"
    assert isinstance(primary_error(info.value), ValueError)
    assert sorted(cancelled) == ["a", "b"]
    assert cleaned == ["routes", "tun"]  # newest first


async def test_graceful_stop_runs_exit_hooks_then_cancels() -> None:
    order: list[str] = []
    manager = WorkersManager(exit_grace=1.0)

    async def hook() -> None:
        order.append("exit-notify")

    manager.add_exit_hook(hook)
    manager.add_cleanup(lambda: order.append("cleanup"))

    async def setup(m: WorkersManager) -> None:
        m.start_service("idle", trio.sleep_forever)
        m.request_stop("test")

    with trio.fail_after(5):
        await manager.run(setup)
    assert order == ["exit-notify", "cleanup"]
    assert manager.stop_reason == "test"


async def test_a_hanging_exit_hook_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    manager = WorkersManager(exit_grace=0.5)

    async def hangs() -> None:
        await trio.sleep_forever()

    manager.add_exit_hook(hangs)

    async def setup(m: WorkersManager) -> None:
        m.start_service("idle", trio.sleep_forever)
        m.request_stop()

    start = trio.current_time()
    await manager.run(setup)
    assert trio.current_time() - start == pytest.approx(0.5)


async def test_core_timer_fires_at_deadline_and_rereads_when_poked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    deadline = [10.0]
    fired: list[float] = []
    timer = CoreTimer()

    async def on_fire() -> None:
        fired.append(trio.current_time())
        deadline[0] = 1e9

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run, lambda: deadline[0], on_fire)
        await trio.sleep(1)
        deadline[0] = 3.0
        timer.poke()
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert fired == [pytest.approx(3.0)]


async def test_outbox_keeps_order_between_concurrent_flushers() -> None:
    send, recv = trio.open_memory_channel[list[int]](0)
    box: Outbox[int] = Outbox(send)
    counter = iter(range(100))

    async def flusher() -> None:
        for _ in range(10):
            await box.flush(lambda: [next(counter)])

    got: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher)
        nursery.start_soon(flusher)
        for _ in range(20):
            got.extend(await recv.receive())
    assert got == sorted(got)


def _blocking_work() -> None:
    """Stands for set-up work that blocks the event loop (a subprocess, a file)."""
    time.sleep(0.05)


async def test_sigint_while_setup_blocks_is_a_graceful_stop() -> None:
    """SIGINT during set-up's blocking work (an nft call, say) used to surface as a
    KeyboardInterrupt inside that code (exit 1, sometimes a TrioInternalError): the signal
    receiver now listens before setup runs, so it is the usual graceful stop."""
    cleaned: list[str] = []
    m = WorkersManager(handle_signals=True, exit_grace=1.0)

    async def setup(mgr: WorkersManager) -> None:
        mgr.add_cleanup(lambda: cleaned.append("cleanup"))
        os.kill(os.getpid(), signal.SIGINT)
        _blocking_work()  # while the signal arrives
        await trio.sleep_forever()

    with trio.fail_after(10):
        await m.run(setup)
    assert m.stop_reason == "SIGINT" and cleaned == ["cleanup"]


async def test_signals_during_the_cleanup_never_cut_it_short() -> None:
    """Three Ctrl+C / SIGTERM in a row: the first stops gracefully, the second at once, and
    any further one (still queued when the receiver closed, or arriving while the cleanups
    run) used to raise KeyboardInterrupt into the cleanups or kill the process (exit 143)
    before the routes and firewall rules were removed. Now it is logged, and every cleanup
    runs; the handlers are put back afterwards."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cleaned: list[str] = []
    m = WorkersManager(handle_signals=True, exit_grace=5.0)

    def first_cleanup() -> None:  # runs last (newest first)
        cleaned.append("routes")

    def second_cleanup() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        cleaned.append("dns")

    async def hook() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # second: stop now
        os.kill(os.getpid(), signal.SIGTERM)  # third: queued as the receiver closes
        await trio.sleep(0.2)

    async def setup(mgr: WorkersManager) -> None:
        mgr.add_cleanup(first_cleanup)
        mgr.add_cleanup(second_cleanup)
        mgr.add_exit_hook(hook)
        os.kill(os.getpid(), signal.SIGINT)
        await trio.sleep_forever()

    with trio.fail_after(10):
        await m.run(setup)
    assert m.stop_reason == "SIGINT" and cleaned == ["dns", "routes"]
    assert {s: signal.getsignal(s) for s in before} == before


async def test_signals_kept_before_the_run_are_acted_on_before_setup() -> None:
    """What the caller's own handler kept before the manager ran (`trivpn serve`'s start-up,
    cli_common.StartupSignals) is acted on once the manager listens: SIGUSR2 calls its
    function, SIGHUP stops the run before set-up starts anything."""
    reports: list[str] = []
    m = WorkersManager(
        handle_signals=True, also_stop_on={signal.SIGHUP: "no reload"},
        also_handle={signal.SIGUSR2: lambda: reports.append("status")},
        kept_signals=lambda: [signal.SIGUSR2, signal.SIGHUP, signal.SIGUSR2],
    )

    async def setup(mgr: WorkersManager) -> None:
        raise AssertionError("set-up ran after a stop")

    with trio.fail_after(10):
        await m.run(setup)
    assert m.stop_reason == "SIGHUP" and reports == ["status"]


async def test_a_stop_asked_before_the_run_is_kept() -> None:
    """Before, `request_stop` before `run` was dropped and the run went on."""
    m = WorkersManager()
    m.request_stop("early")

    async def setup(mgr: WorkersManager) -> None:
        raise AssertionError("set-up ran after a stop")

    with trio.fail_after(10):
        await m.run(setup)
    assert m.stop_reason == "early"


async def test_restart_signals_while_stopping_are_noted_and_a_sigterm_still_ends_it() -> None:
    """A stop on SIGHUP is a restart for `trivpn serve`: more SIGHUPs meanwhile are noted
    once (before, each cut the stop short, so the clients were not told), a SIGTERM cuts it
    short and is recorded, so that the owner stops for good (server/restart.py)."""
    m = WorkersManager(exit_grace=5.0, also_stop_on={signal.SIGHUP: "restarting"})
    hook_done: list[str] = []

    async def hook() -> None:
        for _ in range(100):
            m.handle_signal(signal.SIGHUP)
        await trio.sleep(0.05)
        hook_done.append("told")
        m.handle_signal(signal.SIGTERM)
        await trio.sleep_forever()

    async def setup(mgr: WorkersManager) -> None:
        mgr.add_exit_hook(hook)
        mgr.handle_signal(signal.SIGHUP)

    with trio.fail_after(3):
        await m.run(setup)
    assert hook_done == ["told"]  # the SIGHUPs did not hurry the stop
    assert m.stop_reason == "SIGHUP" and m.stop_signals == [signal.SIGHUP, signal.SIGTERM]


async def test_a_stop_requested_while_the_run_ends_is_a_no_op() -> None:
    """The nursery is closed from its last task's end until `run` resumes and forgets it;
    a request_stop in that gap (trivpn.serve() or connect() cancelled from outside) raised
    start_soon's "Nursery is closed to new arrivals" instead of doing nothing."""
    manager = WorkersManager()
    async with trio.open_nursery() as nursery:
        pass  # closed from here on
    manager.nursery = nursery  # the gap, held open
    manager.request_stop("left the block")
    assert manager.stop_reason == "left the block"
