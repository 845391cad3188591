"""Proof tests for `trivpn relay` + `trivpn expose` on loopback (no root needed).

Real services sit behind the tunnel: Python's http.server (HTTP/1.1 keep-alive), a trio
TCP echo service, a bulk source and a half-close service; public clients connect to the
port the relay assigned. Every wait is bounded with `fail_after` (liveness, not speed).
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import http.server
import logging
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import trio
from helpers.require import require_module

from trivpn.errors import FatalError
from trivpn.reverse.expose import Expose, ExposeConfig
from trivpn.reverse.relay import Relay, RelayConfig
from trivpn.reverse.session import SessionConfig

HOST = "127.0.0.1"
TOKEN = b"correct horse"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Tunnel:
    relay: Relay
    expose: Expose
    public_port: int
    tunnel_port: int
    nursery: trio.Nursery
    bound: list[int]


async def echo_handler(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


async def start_service(nursery: trio.Nursery, handler: Callable) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host=HOST))
    return listeners[0].socket.getsockname()[1]


async def start_tunnel(
    nursery: trio.Nursery,
    local_port: int,
    *,
    session: SessionConfig | None = None,
    tunnel_port: int = 0,
    start_port: int | None = None,
    relay_kw: dict | None = None,
    expose_kw: dict | None = None,
) -> Tunnel:
    start = start_port or free_port()
    relay = Relay(
        RelayConfig(
            host=HOST,
            port=tunnel_port,
            start_port=start,
            end_port=min(start + 40, 65535),
            tokens={"alice": TOKEN},
            session=session or SessionConfig(),
            **(relay_kw or {}),
        )
    )
    tport = await nursery.start(relay.serve)
    bound: list[int] = []
    ready = trio.Event()

    def on_bound(host: str, port: int) -> None:
        bound.append(port)
        ready.set()

    kw = {"server_host": HOST, "server_port": tport, "local_host": HOST, "local_port": local_port}
    kw.update(expose_kw or {})
    expose = Expose(ExposeConfig(token=TOKEN, session=session or SessionConfig(), **kw), on_bound)  # type: ignore[arg-type]
    nursery.start_soon(expose.run)
    with trio.fail_after(10):
        await ready.wait()
    return Tunnel(relay, expose, bound[0], tport, nursery, bound)


@pytest.fixture
async def nursery() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as n:
        yield n
        n.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll a condition, bounded in count and time (tasks in other services set it)."""
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def read_all(stream: trio.abc.ReceiveStream, limit: int = 1 << 30) -> bytes:
    buf = bytearray()
    while len(buf) <= limit:
        data = await stream.receive_some(65536)
        if not data:
            break
        buf += data
    return bytes(buf)


# ------------------------------------------------------------------------------- HTTP


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.startswith("/missing"):
            body = b"nope"
            self.send_response(404)
        else:
            body = f"hello {self.path}".encode()
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_http_keepalive_requests_all_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    server = http.server.ThreadingHTTPServer((HOST, 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tunnel = await start_tunnel(nursery, server.server_address[1])
        caplog.set_level(logging.INFO, logger="trivpn.reverse")

        def client() -> list[tuple[int, bytes]]:
            conn = http.client.HTTPConnection(HOST, tunnel.public_port, timeout=10)
            out = []
            for path in ("/api/users", "/api/users?page=2", "/missing"):
                conn.request("GET", path)
                resp = conn.getresponse()
                out.append((resp.status, resp.read()))
            sock_id = id(conn.sock)
            conn.close()
            out.append((sock_id, b""))
            return out

        with trio.fail_after(20):
            results = await trio.to_thread.run_sync(client)
        assert results[0] == (200, b"hello /api/users")
        assert results[1] == (200, b"hello /api/users?page=2")
        assert results[2] == (404, b"nope")
        m = tunnel.expose
        await wait_until(
            lambda: m.session_metrics is not None and m.session_metrics.http_requests >= 3
        )
        lines = [r.getMessage() for r in caplog.records if "│ HTTP │" in r.getMessage()]
        # three requests on one keep-alive connection, each logged by the relay and by expose
        assert sum("✓ GET /api/users 200 OK" in x for x in lines) == 2
        # the query string is redacted by default (issue 15; --log-query shows it)
        assert sum("✓ GET /api/users?… 200 OK" in x for x in lines) == 2
        assert not any("page=2" in x for x in lines)
        assert sum("✗ GET /missing 404 Not Found" in x for x in lines) == 2
        assert tunnel.expose.session_metrics.http_status == {200: 2, 404: 1}
        assert tunnel.relay.live["alice"][0].streams_total == 1  # one TCP connection
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------- echo


async def test_thousand_concurrent_echo_streams(nursery: trio.Nursery) -> None:
    port = await start_service(nursery, echo_handler)
    tunnel = await start_tunnel(nursery, port)
    results: dict[int, bool] = {}
    gate = trio.Event()

    async def one(i: int) -> None:
        stream = await trio.open_tcp_stream(HOST, tunnel.public_port)
        async with stream:
            await gate.wait()  # all 1000 connections are open at the same time
            payload = hashlib.sha256(b"%d" % i).digest() * (1 + i % 64)
            await stream.send_all(payload)
            await stream.send_eof()
            results[i] = await read_all(stream) == payload

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for i in range(1000):
                n.start_soon(one, i)
            await wait_until(lambda: tunnel.relay.live["alice"][0].streams_active >= 1000, 30)
            assert tunnel.relay.live["alice"][0].streams_active == 1000
            gate.set()
    assert len(results) == 1000 and all(results.values())


# ------------------------------------------------------------------- head-of-line


async def test_stalled_reader_does_not_block_other_streams(nursery: trio.Nursery) -> None:
    normal_size = 1 << 20
    stalled_size = 48 << 20  # far more than every buffer on the path can hold
    written: dict[str, int] = {"stalled": 0}

    async def source(stream: trio.SocketStream) -> None:
        async with stream:
            kind = await stream.receive_some(1)
            size = stalled_size if kind == b"S" else normal_size
            chunk = b"\xab" * 65536
            sent = 0
            while sent < size:
                await stream.send_all(chunk)
                sent += len(chunk)
                if kind == b"S":
                    written["stalled"] = sent

    port = await start_service(nursery, source)
    tunnel = await start_tunnel(nursery, port, session=SessionConfig(window=256 * 1024))
    stalled = trio.socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await stalled.connect((HOST, tunnel.public_port))
    await stalled.send(b"S")
    done: list[int] = []

    async def normal() -> None:
        stream = await trio.open_tcp_stream(HOST, tunnel.public_port)
        async with stream:
            await stream.send_all(b"N")
            data = await read_all(stream)
            assert data == b"\xab" * normal_size
            done.append(1)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            for _ in range(99):
                n.start_soon(normal)
    assert len(done) == 99
    # the stalled stream really was stalled while the others finished ...
    assert written["stalled"] < stalled_size
    # ... and once its reader reads, every byte arrives intact
    got = 0
    with trio.fail_after(60):
        while got < stalled_size:
            data = await stalled.recv(1 << 20)
            assert data and data.count(0xAB) == len(data)
            got += len(data)
    assert got == stalled_size
    stalled.close()


# ------------------------------------------------------------------------ half-close


async def test_half_close_gets_whole_reply(nursery: trio.Nursery) -> None:
    async def service(stream: trio.SocketStream) -> None:
        async with stream:
            request = await read_all(stream)  # waits for the client's FIN
            body = hashlib.sha256(request).hexdigest().encode() * 40000  # ~2.5 MB
            await stream.send_all(b"reply:" + body)

    port = await start_service(nursery, service)
    tunnel = await start_tunnel(nursery, port)
    sock = trio.socket.socket()
    await sock.connect((HOST, tunnel.public_port))
    await sock.send(b"req\n")
    sock.shutdown(socket.SHUT_WR)  # what `printf req | nc -N` does
    buf = bytearray()
    with trio.fail_after(20):
        while True:
            data = await sock.recv(65536)
            if not data:
                break
            buf += data
    sock.close()
    expected = b"reply:" + hashlib.sha256(b"req\n").hexdigest().encode() * 40000
    assert bytes(buf) == expected


async def test_unreachable_local_service_resets_public_connection(nursery: trio.Nursery) -> None:
    # A port that is bound but not listening refuses every connection, and stays ours for
    # the whole test. (A port that was merely free a moment ago could be taken by anything
    # running meanwhile, which made this test flaky on a busy machine.)
    with socket.socket() as refusing:
        refusing.bind((HOST, 0))
        tunnel = await start_tunnel(nursery, refusing.getsockname()[1])
        for attempt in (1, 2):  # the session survives a refused stream
            sock = trio.socket.socket()
            await sock.connect((HOST, tunnel.public_port))
            with trio.fail_after(10), pytest.raises(ConnectionResetError):
                while await sock.recv(100):
                    pass
            sock.close()
            # expose could not reach the service and said RST(refused); the relay got it
            # before it reset the public connection
            assert tunnel.expose.session_metrics is not None
            assert tunnel.expose.session_metrics.streams_refused == attempt
            assert tunnel.relay.live["alice"][0].streams_refused == attempt


# ------------------------------------------------------------------------- reconnect


async def test_relay_restart_gives_same_port(nursery: trio.Nursery) -> None:
    port = await start_service(nursery, echo_handler)
    tport = free_port()
    relay_scope = trio.CancelScope()
    relay_up = trio.Event()
    relay_cfg = dict(host=HOST, port=tport, start_port=free_port(), tokens={"alice": TOKEN})
    relay_cfg["end_port"] = min(relay_cfg["start_port"] + 40, 65535)  # type: ignore[operator]

    async def run_relay(scope: trio.CancelScope) -> None:
        with scope:
            relay = Relay(RelayConfig(**relay_cfg))  # type: ignore[arg-type]
            await relay.serve(task_status=_Started(relay_up))

    nursery.start_soon(run_relay, relay_scope)
    with trio.fail_after(5):
        await relay_up.wait()
    bound: list[int] = []
    ready = [trio.Event()]

    def on_bound(host: str, p: int) -> None:
        bound.append(p)
        ready[0].set()

    expose = Expose(
        ExposeConfig(HOST, tport, HOST, port, TOKEN, backoff_initial=0.05, backoff_max=0.2),
        on_bound,
    )
    nursery.start_soon(expose.run)
    with trio.fail_after(10):
        await ready[0].wait()
    first = bound[0]
    relay_scope.cancel()  # the relay process "dies"
    ready[0] = trio.Event()
    await trio.sleep(0.1)
    relay_up = trio.Event()
    nursery.start_soon(run_relay, trio.CancelScope())
    with trio.fail_after(10):
        await ready[0].wait()
    assert bound == [first, first]
    assert expose.sessions == 2
    stream = await trio.open_tcp_stream(HOST, first)
    async with stream:
        await stream.send_all(b"still here")
        await stream.send_eof()
        with trio.fail_after(10):
            assert await read_all(stream) == b"still here"


class _Started:
    """A task_status stand-in that sets an event (run_relay has no parent nursery.start)."""

    def __init__(self, event: trio.Event) -> None:
        self.event = event

    def started(self, value: object = None) -> None:
        self.event.set()


async def test_lease_keeps_port_for_same_client_only(nursery: trio.Nursery) -> None:
    port = await start_service(nursery, echo_handler)
    tunnel = await start_tunnel(nursery, port, relay_kw={"lease": 30.0})
    first = tunnel.public_port
    # the tunnel connection drops (not a relay restart): the relay keeps the lease
    runner = tunnel.relay.by_owner[("alice", tunnel.expose.client_id)]
    other_ready = trio.Event()
    other_port: list[int] = []
    other = Expose(
        ExposeConfig(HOST, tunnel.tunnel_port, HOST, port, TOKEN, reconnect=False),
        lambda h, p: (other_port.append(p), other_ready.set()),
    )
    runner.drop()
    nursery.start_soon(other.run)
    with trio.fail_after(10):
        await other_ready.wait()
    assert other_port[0] != first  # a different client never gets a leased port
    await wait_until(lambda: len(tunnel.bound) >= 2, 15)
    assert tunnel.bound[1] == first


# ------------------------------------------------------------------------- auth + TLS


async def test_wrong_token_is_retried_with_backoff_then_fatal(nursery: trio.Nursery) -> None:
    """AUTH_ERR proves nothing (issue 15: a fake relay must not end expose for good), so a
    wrong token is retried like a lost connection and ends once the attempts are used."""
    port = await start_service(nursery, echo_handler)
    tunnel = await start_tunnel(nursery, port)
    bad = Expose(
        ExposeConfig(
            HOST, tunnel.tunnel_port, HOST, port, b"wrong", attempts=2, backoff_initial=0.01
        )
    )
    with (
        trio.fail_after(10),
        pytest.raises(
            FatalError,
            match="authentication failed: the relay rejected the token; gave up after 2 attempts",
        ),
    ):
        await bad.run()


async def test_cli_wrong_token_one_line_exit_1(nursery: trio.Nursery) -> None:
    port = await start_service(nursery, echo_handler)
    tunnel = await start_tunnel(nursery, port)
    with trio.fail_after(30):
        proc = await trio.run_process(
            [
                sys.executable,
                "-m",
                "trivpn",
                "expose",
                "--server",
                f"{HOST}:{tunnel.tunnel_port}",
                "--local",
                f"{HOST}:{port}",
                "--token",
                "wrong-token-but-16-bytes",
                "--max-attempts",
                "1",
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert proc.returncode == 1
    assert proc.stderr.decode().strip().splitlines()[-1] == (
        "trivpn: error: authentication failed: the relay rejected the token;"
        " gave up after 1 attempts"
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    trustme = require_module("trustme")
    d = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "relay.test")
    other = trustme.CA()
    paths = {
        "ca": d / "ca.pem",
        "other": d / "other.pem",
        "chain": d / "chain.pem",
        "key": d / "key.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other.cert_pem.write_to_path(str(paths["other"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    with open(paths["chain"], "wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    return {k: str(v) for k, v in paths.items()}


async def test_tls_verified_against_ca_and_real_name(
    nursery: trio.Nursery, tls_files: dict[str, str]
) -> None:
    port = await start_service(nursery, echo_handler)
    tunnel = await start_tunnel(
        nursery,
        port,
        relay_kw={"tls_cert": tls_files["chain"], "tls_key": tls_files["key"]},
        expose_kw={"server_host": "localhost", "tls": True, "tls_ca": tls_files["ca"]},
    )
    stream = await trio.open_tcp_stream(HOST, tunnel.public_port)
    async with stream:
        await stream.send_all(b"over tls")
        await stream.send_eof()
        with trio.fail_after(10):
            assert await read_all(stream) == b"over tls"
    # an unrelated CA, or a name the certificate does not carry, is refused (not retried)
    for kw in (
        {"tls_ca": tls_files["other"]},
        {"tls_ca": tls_files["ca"], "tls_server_name": "evil.test"},
    ):
        cfg = ExposeConfig(HOST, tunnel.tunnel_port, HOST, port, TOKEN, tls=True, **kw)  # type: ignore[arg-type]
        with trio.fail_after(10), pytest.raises(FatalError, match="not trusted"):
            await Expose(cfg).run()


async def test_tls_relay_refuses_plain_client(
    nursery: trio.Nursery, tls_files: dict[str, str]
) -> None:
    port = await start_service(nursery, echo_handler)
    tunnel = await start_tunnel(
        nursery,
        port,
        relay_kw={"tls_cert": tls_files["chain"], "tls_key": tls_files["key"]},
        expose_kw={"server_host": "localhost", "tls": True, "tls_ca": tls_files["ca"]},
    )
    plain = Expose(ExposeConfig(HOST, tunnel.tunnel_port, HOST, port, TOKEN, reconnect=False))
    with trio.fail_after(15), pytest.raises(FatalError, match="not reconnecting"):
        await plain.run()


# ------------------------------------------------------------------------- metrics


async def test_prometheus_endpoint(nursery: trio.Nursery) -> None:
    require_module("prometheus_client")
    from trivpn.reverse.metrics import make_registry
    from trivpn.reverse.promserver import serve_metrics

    port = await start_service(nursery, echo_handler)
    tunnel = await start_tunnel(nursery, port)
    stream = await trio.open_tcp_stream(HOST, tunnel.public_port)
    async with stream:
        await stream.send_all(b"12345")
        await stream.send_eof()
        with trio.fail_after(10):
            assert await read_all(stream) == b"12345"
    mport = await nursery.start(serve_metrics, make_registry(tunnel.relay.metrics_groups), HOST, 0)

    def scrape() -> str:
        conn = http.client.HTTPConnection(HOST, mport, timeout=10)
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read().decode()

    with trio.fail_after(10):
        text = await trio.to_thread.run_sync(scrape)
    assert 'trivpn_reverse_streams_total{client="alice"} 1.0' in text
    assert 'trivpn_reverse_bytes_in_total{client="alice"} 5.0' in text
