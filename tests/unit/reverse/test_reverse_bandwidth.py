"""Bandwidth limit per client (issue 15), measured over loopback through a real relay and
expose: 8 MiB each way at 2 MiB/s, judged against the token bucket's own bounds."""

from __future__ import annotations

import functools

import trio
from helpers.reverse import HOST, free_port

from trivpn.reverse.bucket import MIN_BURST
from trivpn.reverse.expose import Expose, ExposeConfig
from trivpn.reverse.pipe import READ_SIZE, SHAPED_SEND
from trivpn.reverse.relay import ClientLimits, Relay, RelayConfig

TOKEN = b"0123456789abcdef-token"
MIB = 1024 * 1024
RATE = 2 * MIB
SIZE = 8 * MIB


async def _service(stream: trio.SocketStream) -> None:
    """Sends SIZE bytes while it reads (and counts) whatever comes."""
    async with stream:
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                block = b"d" * 65536
                for _ in range(SIZE // len(block)):
                    await stream.send_all(block)

            nursery.start_soon(send)
            got = 0
            while got < SIZE:
                data = await stream.receive_some(1 << 20)
                if not data:
                    break
                got += len(data)


async def test_bandwidth_limit_holds_both_ways() -> None:
    start = free_port()
    relay = Relay(
        RelayConfig(
            host=HOST,
            port=0,
            start_port=start,
            end_port=start + 9,
            tokens={"alice": TOKEN},
            clients={"alice": ClientLimits(bandwidth=RATE)},
        )
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, _service, 0, host=HOST)
            )
            local = listeners[0].socket.getsockname()[1]
            tport = await nursery.start(relay.serve)
            bound = trio.Event()
            public: list[int] = []

            def on_bound(host: str, port: int) -> None:
                public.append(port)
                bound.set()

            expose = Expose(ExposeConfig(HOST, tport, HOST, local, TOKEN), on_bound)
            nursery.start_soon(expose.run)
            await bound.wait()
            stream = await trio.open_tcp_stream(HOST, public[0])
            elapsed: dict[str, float] = {}
            t0 = trio.current_time()

            async def upload() -> None:
                block = b"u" * 65536
                for _ in range(SIZE // len(block)):
                    await stream.send_all(block)
                # the relay read it all once the bucket let it: measured at the relay
                for _ in range(3000):  # bounded, and by fail_after
                    if relay.metrics_groups()["alice"][0].bytes_in >= SIZE:
                        break
                    await trio.sleep(0.01)
                elapsed["up"] = trio.current_time() - t0

            async def download() -> None:
                got = 0
                while got < SIZE:
                    data = await stream.receive_some(1 << 20)
                    assert data
                    got += len(data)
                elapsed["down"] = trio.current_time() - t0

            async with trio.open_nursery() as inner:
                inner.start_soon(upload)
                inner.start_soon(download)
            await stream.aclose()
            nursery.cancel_scope.cancel()
    burst = max(MIN_BURST, RATE / 8)
    for way, largest in (("up", READ_SIZE), ("down", SHAPED_SEND)):
        rate = SIZE / elapsed[way] / MIB
        print(f"{way}: 8 MiB in {elapsed[way]:.2f} s = {rate:.2f} MiB/s (limit 2 MiB/s)")
        # the bucket's bound: no sender honouring its pauses is faster than this
        assert elapsed[way] >= (SIZE - burst - largest) / RATE
        # and it does not hold the bytes back much longer than the debt needs
        assert elapsed[way] <= (SIZE - burst) / RATE + 2.0
