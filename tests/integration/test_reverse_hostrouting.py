"""HTTP routing by Host and TLS passthrough by SNI on one public port (loopback, no root).

Two `expose` processes lease two subdomains of the relay's --domain; requests to
127.0.0.1:<http port> with an explicit Host header (never DNS) reach the right local
service. Unknown names get a 404 page / a TLS unrecognized_name alert; hostile heads
(oversized, slowloris, a crowd of idle connections) are bounded.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
import trio
from helpers.require import require_module
from helpers.reverse_http import (
    DOMAIN,
    HOST,
    read_until_closed,
    start_expose,
    start_relay,
    start_service,
    wait_until,
)

from trivpn.errors import FatalError
from trivpn.reverse.expose import Expose, ExposeConfig
from trivpn.reverse.http.names import ROUTE_HTTP, ROUTE_TLS

from helpers.reverse_http import TOKEN, http_get  # isort: skip


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def test_two_subdomains_through_one_port(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    assert relay.router is not None
    port = relay.router.http_port
    api, web = await start_service(nursery, "api"), await start_service(nursery, "web")
    e1 = await start_expose(nursery, relay, api.port, "api")
    await start_expose(nursery, relay, web.port, "web")
    assert e1.urls == [f"http://api.{DOMAIN}:{port}"]
    for _ in range(3):
        got_api = await http_get(port, f"api.{DOMAIN}:{port}", "/users?id=1")
        got_web = await http_get(port, f"WEB.{DOMAIN}.", "/index.html")
        assert got_api.startswith(b"HTTP/1.1 200") and got_api.endswith(b"hello from api /users?id=1")
        assert got_web.startswith(b"HTTP/1.1 200") and got_web.endswith(b"hello from web /index.html")
    assert len(api.requests) == 3 and len(web.requests) == 3
    # the relay's request log saw them too (the head went through the pipe's observer)
    runner = relay.router.routes["api"]
    await wait_until(lambda: runner.metrics.http_requests >= 3)


async def test_keep_alive_connection_stays_on_its_tunnel(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    assert relay.router is not None
    api = await start_service(nursery, "api")
    await start_expose(nursery, relay, api.port, "api")
    stream = await trio.open_tcp_stream(HOST, relay.router.http_port)
    async with stream:
        req = f"GET /a HTTP/1.1\r\nHost: api.{DOMAIN}\r\n\r\n".encode()
        # a split head and a second request on the same connection
        await stream.send_all(req[:7])
        await stream.send_all(req[7:] + f"GET /b HTTP/1.1\r\nHost: api.{DOMAIN}\r\n\r\n".encode())
        await wait_until(lambda: len(api.requests) == 2)
    assert [r.target for r in api.requests] == [b"/a", b"/b"]


async def test_unknown_name_gets_a_404_page_with_the_host_escaped(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    assert relay.router is not None
    port = relay.router.http_port
    got = await http_get(port, f"nobody.{DOMAIN}")
    assert got.startswith(b"HTTP/1.1 404 Not Found")
    assert f"No tunnel is serving nobody.{DOMAIN}".encode() in got
    for host in (f"a.b.{DOMAIN}", "example.com", f"x<script>.{DOMAIN}"):
        got = await http_get(port, host)
        assert got.startswith(b"HTTP/1.1 404"), host
        assert b"<script>" not in got and b"&lt;script&gt;" in got or "<" not in host
    got = await http_get(port, "")  # an empty Host is no tunnel either
    assert got.startswith(b"HTTP/1.1 404") or got.startswith(b"HTTP/1.1 400")


async def test_name_is_leased_like_a_port(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    assert relay.router is not None
    port = relay.router.http_port
    api = await start_service(nursery, "api")

    def expose(**kw: object) -> Expose:
        cfg = ExposeConfig(HOST, relay.tunnel_port, HOST, api.port, TOKEN, subdomain="api",
                           routes=ROUTE_HTTP, reconnect=False, **kw)  # type: ignore[arg-type]
        return Expose(cfg)

    first = expose()
    done = trio.Event()

    async def run_first() -> None:
        with pytest.raises(FatalError):
            await first.run()
        done.set()

    nursery.start_soon(run_first)
    await wait_until(lambda: "api" in relay.router.routes)  # type: ignore[union-attr]
    # another client (its own client id) cannot take the name: a clear, final error
    with trio.fail_after(10), pytest.raises(FatalError, match="subdomain 'api' is in use"):
        await expose().run()
    # the holder goes away: the name stays leased (503, not 404) and still is not free
    runner = relay.router.routes["api"]
    runner.session.close("test")
    runner.ring()
    with trio.fail_after(10):
        await done.wait()
    assert "api" not in relay.router.routes
    got = await http_get(port, f"api.{DOMAIN}")
    assert got.startswith(b"HTTP/1.1 503"), got[:60]
    with trio.fail_after(10), pytest.raises(FatalError, match="in use or leased"):
        await expose().run()
    # the same client (same client id) gets it back within the lease
    back = expose()
    back.client_id = first.client_id
    nursery.start_soon(back.run)
    await wait_until(lambda: "api" in relay.router.routes)  # type: ignore[union-attr]
    assert (await http_get(port, f"api.{DOMAIN}", "/back")).endswith(b"hello from api /back")


async def test_reconnect_within_the_lease_keeps_the_name(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    assert relay.router is not None
    api = await start_service(nursery, "api")
    expose = await start_expose(nursery, relay, api.port, "api", backoff_initial=0.05)
    old = relay.router.routes["api"]
    old.drop()  # the tunnel connection dies; expose reconnects with the same client id
    await wait_until(lambda: relay.router.routes.get("api") not in (None, old))  # type: ignore[union-attr]
    got = await http_get(relay.router.http_port, f"api.{DOMAIN}", "/again")
    assert got.endswith(b"hello from api /again")
    assert expose.sessions == 2


async def test_oversized_head_gets_431(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, max_head=4096)
    assert relay.router is not None
    got = await http_get(relay.router.http_port, f"api.{DOMAIN}", extra=b"X-Big: " + b"a" * 20000 + b"\r\n")
    assert got.startswith(b"HTTP/1.1 431"), got[:60]
    assert relay.router.pending == 0


async def test_slowloris_head_is_cut_at_the_deadline(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, head_timeout=0.5)
    assert relay.router is not None
    stream = await trio.open_tcp_stream(HOST, relay.router.http_port)
    started = trio.current_time()
    got = b""
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\n")
        with trio.fail_after(5):
            for i in range(100):  # one header line every 0.1 s: never a complete head
                try:
                    await stream.send_all(f"X-{i}: y\r\n".encode())
                except trio.BrokenResourceError:
                    break
                with trio.move_on_after(0.1):
                    got = await read_until_closed(stream)
                    break
    assert got.startswith(b"HTTP/1.1 408"), got[:60]
    assert trio.current_time() - started < 2.0
    assert relay.router.pending == 0


async def test_idle_connection_crowd_is_capped(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, max_pending=8)
    assert relay.router is not None
    idle = [await trio.open_tcp_stream(HOST, relay.router.http_port) for _ in range(8)]
    await wait_until(lambda: relay.router.pending == 8)  # type: ignore[union-attr]
    extra = await trio.open_tcp_stream(HOST, relay.router.http_port)
    with trio.fail_after(5):
        assert await read_until_closed(extra) == b""  # closed at once
    assert relay.router.pending == 8
    for s in idle + [extra]:
        await s.aclose()
    await wait_until(lambda: relay.router.pending == 0)  # type: ignore[union-attr]


# ------------------------------------------------------------------------ TLS by SNI


async def _tls_echo(stream: trio.SSLStream[trio.SocketStream]) -> None:
    async with stream:
        try:
            async for data in stream:
                await stream.send_all(b"tls:" + data)
        except trio.BrokenResourceError:
            pass


async def test_tls_passthrough_routed_by_sni(nursery: trio.Nursery) -> None:
    trustme = require_module("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(f"secure.{DOMAIN}").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    listeners = await nursery.start(trio.serve_ssl_over_tcp, _tls_echo, 0, server_ctx)
    local_port = listeners[0].transport_listener.socket.getsockname()[1]
    relay = await start_relay(nursery, https=True)
    assert relay.router is not None
    expose = await start_expose(nursery, relay, local_port, "secure", routes=ROUTE_HTTP | ROUTE_TLS)
    assert expose.urls[1] == f"https://secure.{DOMAIN}:{relay.router.https_port}"

    tcp = await trio.open_tcp_stream(HOST, relay.router.https_port)
    tls = trio.SSLStream(tcp, client_ctx, server_hostname=f"secure.{DOMAIN}")
    async with tls:
        with trio.fail_after(10):
            await tls.send_all(b"hello")  # the certificate is the service's, end to end
            assert await tls.receive_some(100) == b"tls:hello"

    # a name no tunnel serves: the TLS client sees the unrecognized_name alert
    tcp = await trio.open_tcp_stream(HOST, relay.router.https_port)
    tls = trio.SSLStream(tcp, client_ctx, server_hostname=f"nobody.{DOMAIN}")
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as info:
        await tls.do_handshake()
    assert "UNRECOGNIZED_NAME" in repr(info.value.__cause__).upper()
    await tcp.aclose()


async def test_tls_for_an_http_only_name_is_refused(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, https=True)
    assert relay.router is not None
    api = await start_service(nursery, "api")
    await start_expose(nursery, relay, api.port, "api", routes=ROUTE_HTTP)
    ctx = ssl.create_default_context()
    tcp = await trio.open_tcp_stream(HOST, relay.router.https_port)
    tls = trio.SSLStream(tcp, ctx, server_hostname=f"api.{DOMAIN}")
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await tls.do_handshake()
    assert api.requests == []
    await tcp.aclose()


async def test_relay_without_https_refuses_a_tls_bind(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    expose = Expose(ExposeConfig(HOST, relay.tunnel_port, HOST, 1, TOKEN, subdomain="sec",
                                 routes=ROUTE_TLS))
    with trio.fail_after(10), pytest.raises(FatalError, match="no --https-addr"):
        await expose.run()
