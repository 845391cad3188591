"""Stalled public clients do not freeze a tunnel's other downloads (relay + expose in this
process, loopback only).

The hunt's figure: 10 clients with SO_RCVBUF 4096 that request a large response and
never read, then `curl` of the same response stopped after 65,330 bytes and hung until
`--stall-timeout` (60 s) reset the stallers. Now the reader gets its 8 MiB within the
time limit (on this machine in well under a second) while the stallers stay connected,
and the relay holds no more than the stated bound: N x 64 KiB + C/2.
"""

from __future__ import annotations

import socket

import trio
from helpers.reverse import start_one_port_tunnel

from trivpn.reverse.relay import Relay
from trivpn.reverse.session import SessionConfig

TOKEN = b"0123456789abcdef-credit-e2e"
HOST = "127.0.0.1"
STALLERS = 10
SIZE = 8 * 1024 * 1024
CHUNK = b"x" * 65536


async def _start(nursery: trio.Nursery, service_port: int, session: SessionConfig) -> tuple[Relay, int]:
    relay, _expose, public = await start_one_port_tunnel(nursery, service_port, session, TOKEN)
    return relay, public


async def _read_all(port: int) -> int:
    got = 0
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(b"GET /big HTTP/1.0\r\n\r\n")
        while got < SIZE:  # bounded by SIZE and the caller's deadline
            data = await stream.receive_some(1 << 20)
            if not data:
                break
            got += len(data)
    return got


async def test_ten_stalled_public_clients_do_not_freeze_a_download() -> None:
    async def big_response(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(60):
                try:
                    for _ in range(SIZE // len(CHUNK)):
                        await stream.send_all(CHUNK)
                except trio.BrokenResourceError:
                    pass

    cfg = SessionConfig(session_buffer=8 * 1024 * 1024)  # so 10 stallers reach half of it
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            svc = await nursery.start(trio.serve_tcp, big_response, 0)
            relay, public = await _start(nursery, svc[0].socket.getsockname()[1], cfg)
            runner = next(iter(relay.by_owner.values()))
            socks = []
            for _ in range(STALLERS):  # readers that take nothing
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect((HOST, public))
                s.send(b"GET /big HTTP/1.0\r\n\r\n")
                socks.append(s)
            await trio.sleep(3)  # the stallers' windows grow, then fill
            held_stalled = runner.session.total_buffered
            start = trio.current_time()
            got = 0
            with trio.move_on_after(15):  # before: hung until the 60 s stall timeout
                got = await _read_all(public)
            took = trio.current_time() - start
            streams = runner.session.stream_count
            held = runner.session.total_buffered
            for s in socks:
                s.close()
            nursery.cancel_scope.cancel()
    print(f"stallers hold {held_stalled / 2**20:.1f} MiB; 8 MiB read in {took:.2f} s")
    assert got == SIZE, f"the reader got {got} bytes beside {STALLERS} stalled clients"
    assert streams >= STALLERS  # the stallers were not reset to make it work
    bound = (STALLERS + 1) * cfg.start_window + cfg.session_buffer // 2
    assert held_stalled <= bound and held <= bound
