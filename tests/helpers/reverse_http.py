"""Loopback harness for name-routed reverse tunnels and the inspector (no root).

A relay with `--domain`/`--http-addr`/`--https-addr` on 127.0.0.1, exposes that lease a
subdomain, small h11 HTTP services that count what they get, and raw clients that send an
explicit Host header (never DNS). Every wait is bounded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

from trivpn.reverse.expose import Expose, ExposeConfig
from trivpn.reverse.http.names import ROUTE_HTTP
from trivpn.reverse.http.router import RoutingConfig
from trivpn.reverse.relay import Relay, RelayConfig

HOST = "127.0.0.1"
TOKEN = b"correct horse battery"
DOMAIN = "tunnels.example.net"


@dataclass
class Service:
    """An HTTP service behind an expose: answers `hello from NAME PATH`, counts requests."""

    name: str
    port: int = 0
    requests: list[h11.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)


async def _serve_http(svc: Service, stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        for _ in range(1000):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.Request):
                svc.requests.append(event)
                body = b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                        continue
                    if isinstance(ev, h11.Data):
                        body += ev.data
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                svc.bodies.append(body)
                reply = f"hello from {svc.name} {event.target.decode()}".encode()
                headers = [("content-type", "text/plain"), ("content-length", str(len(reply)))]
                await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
                await stream.send_all(conn.send(h11.Data(data=reply)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
            else:
                return


async def start_service(nursery: trio.Nursery, name: str) -> Service:
    svc = Service(name)
    handler = functools.partial(_serve_http, svc)
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host=HOST))
    svc.port = listeners[0].socket.getsockname()[1]
    return svc


async def start_relay(
    nursery: trio.Nursery, *, https: bool = False, **routing: object
) -> Relay:
    relay = Relay(
        RelayConfig(
            host=HOST,
            port=0,
            start_port=40000,
            end_port=40010,
            tokens={"alice": TOKEN},
            routing=RoutingConfig(
                DOMAIN,
                http_addr=(HOST, 0),
                https_addr=(HOST, 0) if https else None,
                **routing,  # type: ignore[arg-type]
            ),
        )
    )
    await nursery.start(relay.serve)
    return relay


async def start_expose(
    nursery: trio.Nursery,
    relay: Relay,
    local_port: int,
    subdomain: str,
    routes: int = ROUTE_HTTP,
    **kw: object,
) -> Expose:
    ready = trio.Event()

    def on_bound(host: str, port: int) -> None:
        ready.set()

    expose = Expose(
        ExposeConfig(
            HOST,
            relay.tunnel_port,
            HOST,
            local_port,
            TOKEN,
            subdomain=subdomain,
            routes=routes,
            **kw,  # type: ignore[arg-type]
        ),
        on_bound,
    )
    nursery.start_soon(expose.run)
    with trio.fail_after(10):
        await ready.wait()
    return expose


async def http_get(port: int, host: str, path: str = "/", extra: bytes = b"") -> bytes:
    """One GET to 127.0.0.1:port with this Host header; the raw response."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
            + extra
            + b"\r\n"
        )
        await stream.send_all(request)
        return await read_until_closed(stream)


async def read_until_closed(stream: trio.abc.ReceiveStream, limit: int = 1 << 20) -> bytes:
    buf = bytearray()
    with trio.fail_after(10):
        while len(buf) <= limit:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            buf += data
    return bytes(buf)


async def wait_until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll a condition, bounded in count and time (tasks in other services set it)."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not reached in time")
