"""A tiny trio HTTP/1.1 server for `GET /metrics` (h11 parses; prometheus-client renders).

prometheus-client's own server runs in a thread; this one stays inside the relay's nursery,
so it stops with everything else. Each connection gets a short deadline and a bounded
request size, and answers one request.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import h11
import trio

from trivpn.errors import ConfigError
from trivpn.reverse.metrics import render

if TYPE_CHECKING:
    from prometheus_client.core import CollectorRegistry

log = logging.getLogger("trivpn.reverse")

REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 8192


async def _answer(conn: trio.SocketStream, registry: CollectorRegistry) -> None:
    h = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    with trio.move_on_after(REQUEST_TIMEOUT):
        while True:
            ev = h.next_event()
            if ev is h11.NEED_DATA:
                data = await conn.receive_some(4096)
                h.receive_data(data)
                continue
            break
        if isinstance(ev, h11.Request) and ev.method in (b"GET", b"HEAD"):
            if ev.target.split(b"?")[0] == b"/metrics":
                status, body, ctype = (
                    200,
                    render(registry),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            else:
                status, body, ctype = 404, b"see /metrics\n", "text/plain"
        else:
            status, body, ctype = 405, b"GET /metrics\n", "text/plain"
        headers = [
            ("content-type", ctype),
            ("content-length", str(len(body))),
            ("connection", "close"),
        ]
        out = h.send(h11.Response(status_code=status, headers=headers)) or b""
        if ev is not None and getattr(ev, "method", b"") != b"HEAD":
            out += h.send(h11.Data(data=body)) or b""
        await conn.send_all(out)


async def _handle(conn: trio.SocketStream, registry: CollectorRegistry) -> None:
    try:
        await _answer(conn, registry)
    except (h11.ProtocolError, trio.BrokenResourceError, OSError) as exc:
        log.debug("metrics request failed: %s", exc)
    finally:
        await trio.aclose_forcefully(conn)


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        for lst in listeners:
            nursery.start_soon(_serve_one, lst, registry, nursery)


async def _serve_one(
    listener: trio.SocketListener, registry: CollectorRegistry, nursery: trio.Nursery
) -> None:
    async with listener:
        while True:
            try:
                conn = await listener.accept()
            except OSError:
                await trio.sleep(0.1)
                continue
            nursery.start_soon(_handle, conn, registry)
