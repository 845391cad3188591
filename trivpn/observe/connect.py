"""`trivpn connect` with a monitor: management socket, status file, metrics, signals.

`run_connect` runs the engine next to what the profile and flags ask for, in one nursery,
so a failure of either ends both. OS signals mirror the management `signal` command:
SIGUSR1 and SIGHUP restart the session, SIGUSR2 writes the status report to the log
(SIGINT/SIGTERM stay with the engine's workers manager: a graceful stop).
"""

from __future__ import annotations

import signal

import trio

from trivpn.engine import Engine
from trivpn.observe.client import ClientMonitor, LogCapture
from trivpn.observe.serving import ManagementSpec, run_status_file, start_management
from trivpn.records import dataclass

__all__ = ["ObserveOptions", "run_connect"]


@dataclass(frozen=True, slots=True)
class ObserveOptions:
    management: ManagementSpec | None = None
    status: tuple[str, float] | None = None
    metrics: tuple[str, int] | None = None


async def _signals(monitor: ClientMonitor) -> None:
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if name == "SIGUSR2":
                monitor.log_status()
            else:
                monitor.restart(name)


async def run_connect(engine: Engine, monitor: ClientMonitor, options: ObserveOptions) -> None:
    """Run `engine` (a `trivpn.engine.Engine` built with `observer=monitor`) until it ends."""
    import logging

    monitor.engine = engine
    handler = LogCapture(monitor, trio.lowlevel.current_trio_token())
    root = logging.getLogger("trivpn")
    root.addHandler(handler)
    try:
        async with trio.open_nursery() as nursery:
            monitor.nursery = nursery
            if options.management is not None:
                service = await start_management(nursery, monitor, options.management)
                monitor.notify = service.broadcast
            if options.status is not None:
                path, seconds = options.status
                nursery.start_soon(
                    run_status_file, path, seconds, lambda w: w.text(monitor.client_status())
                )
            if options.metrics is not None:
                from trivpn.observe.metrics import serve_metrics

                await nursery.start(serve_metrics, monitor, *options.metrics)
            nursery.start_soon(_signals, monitor)
            monitor.ready.set()
            await engine.run()
            if not monitor.states or monitor.states[-1].name != "EXITING":
                monitor.add_state("EXITING", engine.stop_reason or "exit")
            nursery.cancel_scope.cancel()
    finally:
        root.removeHandler(handler)
