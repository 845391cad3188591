"""Wire a `ServerMonitor` into a starting `trivpn serve`: the management socket, the log
capture for `log`/`>LOG:`, the metrics endpoint. Imported only when one is configured."""

from __future__ import annotations

import logging
from typing import Any

import trio

from trivpn.observe.client import LogCapture
from trivpn.observe.server import ServerMonitor
from trivpn.observe.serving import ManagementSpec, start_management

__all__ = ["start_observing"]


async def start_observing(server: Any, nursery: trio.Nursery, metrics: tuple[str, int] | None) -> ServerMonitor:
    """Start what `server.config.management` and `metrics` ask for in `nursery` (the
    server's root nursery: the listeners end with the server)."""
    monitor = ServerMonitor(server)
    monitor.nursery = nursery
    server.hub.observer = monitor
    handler = LogCapture(monitor, trio.lowlevel.current_trio_token())
    root = logging.getLogger("trivpn")
    root.addHandler(handler)
    server.manager.add_cleanup(lambda: root.removeHandler(handler))
    spec = server.config.management
    if spec is not None:
        service = await start_management(
            nursery, monitor, ManagementSpec(spec.address, spec.port, spec.password_file)
        )
        monitor.notify = service.broadcast
    if metrics is not None:
        from trivpn.observe.metrics import serve_metrics

        await nursery.start(serve_metrics, monitor, *metrics)
    monitor.started()
    monitor.ready.set()
    return monitor
