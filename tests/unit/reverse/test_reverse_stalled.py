"""Issue 15: stalled readers cannot grow the relay or expose, and are reset in time.

Relay and expose run in this process over loopback (so every byte either side holds is
counted: the core's `total_buffered` plus the pipes' backlogs, and this process's RSS
from /proc). Figures measured on this machine, 300 stalled streams each:

* download (public clients request 16 MiB and never read): before, the relay held
  396 MiB (~1.3 MiB a stream) and this process's RSS grew by 547 MiB; now the relay holds
  5 to 16 MiB (small windows that grow only while read, the 16 MiB session cap; the
  largest holders reset BUSY at the cap, 0 to 12 of 300) and RSS grows by 36 to 54 MiB.
* upload (the local service accepts and never reads, the clients upload then leave):
  before, expose held 376 MiB and the relay 77 MiB, RSS +700 MiB, and all 300 streams
  were still open after the clients left (their FIN waited behind bytes nobody granted
  credit for); now expose holds 14 MiB, the relay 13 MiB, RSS +59 MiB, and every stream
  is gone once its reader took nothing for `stall_timeout`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio
import trio.testing
from helpers.reverse import start_one_port_tunnel

from trivpn.reverse.expose import Expose, ExposeRunner
from trivpn.reverse.relay import Relay
from trivpn.reverse.session import SessionConfig

TOKEN = b"0123456789abcdef-stalled"
HOST = "127.0.0.1"
CLIENTS = 300
SIZE = 16 * 1024 * 1024
CHUNK = b"x" * 65536


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _held(runner: object) -> int:
    """Bytes one side holds for its sockets: received and not consumed (the backlogs are
    part of it), plus what waits to be sent."""
    session = runner.session  # type: ignore[attr-defined]
    pipes = runner.pipes  # type: ignore[attr-defined]
    pending = sum(session.pending_bytes(sid) for sid in pipes)
    return int(session.total_buffered) + int(pending)


async def _settle(measure: Callable[[], int], limit: float = 15.0) -> int:
    """`measure()` once it stopped moving for a second after the load arrived (at least
    4 s, at most `limit`)."""
    await trio.sleep(4)
    last, still = measure(), 0
    with trio.move_on_after(limit):
        while still < 4:
            await trio.sleep(0.25)
            now = measure()
            still = still + 1 if abs(now - last) < 256 * 1024 else 0
            last = now
    return measure()


async def _send_big(stream: trio.SocketStream) -> None:
    """The local service's answer: SIZE bytes, until the tunnel resets the connection."""
    async with stream:
        try:
            for _ in range(SIZE // len(CHUNK)):
                await stream.send_all(CHUNK)
        except trio.BrokenResourceError:
            pass


async def _connect_all(port: int, rcvbuf: int | None) -> list[socket.socket]:
    return await _connect_all_n(port, CLIENTS, rcvbuf)


async def _connect_all_n(port: int, n: int, rcvbuf: int | None = 4096) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        try:
            s.connect((HOST, port))
        except BlockingIOError:
            pass
        socks.append(s)
    for s in socks:
        await trio.lowlevel.wait_writable(s)
    return socks


async def _start(nursery: trio.Nursery, service_port: int, session: SessionConfig) -> tuple[Relay, Expose, int]:
    return await start_one_port_tunnel(nursery, service_port, session, TOKEN)


async def test_public_clients_that_never_read_a_large_response() -> None:
    async def big_response(stream: trio.SocketStream) -> None:
        with trio.move_on_after(60):
            await _send_big(stream)

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            svc = await nursery.start(trio.serve_tcp, big_response, 0)
            service_port = svc[0].socket.getsockname()[1]
            relay, _, public = await _start(nursery, service_port, SessionConfig())
            runner = next(iter(relay.by_owner.values()))
            before = _rss_mib()
            socks = await _connect_all(public, rcvbuf=4096)  # a reader that takes nothing
            for s in socks:
                s.send(b"GET /big HTTP/1.0\r\n\r\n")
            held = await _settle(lambda: _held(runner))
            grown = _rss_mib() - before
            streams = runner.session.stream_count
            for s in socks:
                s.close()
            nursery.cancel_scope.cancel()
    print(f"download: relay holds {held / 2**20:.1f} MiB, RSS +{grown:.0f} MiB")
    # 300 x 64 KiB start windows exceed the 16 MiB cap: once full, the largest holders are
    # reset (BUSY) until at most C/(2 x 64 KiB) = 128 streams would fit without any reset;
    # measured: 0 to 12 of 300 reset (credit is no longer withheld from all at half the cap)
    assert CLIENTS >= streams >= SessionConfig().session_buffer // (2 * 64 * 1024)
    # figure: 386 MiB held before; now within the 16 MiB session cap
    assert held <= SessionConfig().session_buffer, f"relay holds {held >> 20} MiB"
    assert grown < 64, f"RSS grew {grown:.0f} MiB for {CLIENTS} stalled clients"


async def test_local_service_that_never_reads_uploads_and_clients_leave() -> None:
    accepted: list[trio.SocketStream] = []

    async def never_reads(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    cfg = SessionConfig(stall_timeout=15.0)
    with trio.fail_after(240):  # generous: a loaded 2-core machine, loopback only
        async with trio.open_nursery() as nursery:
            lst = trio.socket.socket()
            lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await lst.bind((HOST, 0))
            lst.listen(1024)
            listener = trio.SocketListener(lst)
            nursery.start_soon(trio.serve_listeners, never_reads, [listener])
            relay, expose, public = await _start(nursery, lst.getsockname()[1], cfg)
            before = _rss_mib()
            socks = await _connect_all(public, rcvbuf=None)
            sent = [0] * CLIENTS
            for _ in range(40):  # as far as the path takes it, bounded
                for i, s in enumerate(socks):
                    while sent[i] < SIZE:
                        try:
                            sent[i] += s.send(CHUNK)
                        except OSError:
                            break
                await trio.sleep(0.05)
            runners = _expose_runners(expose)
            assert runners
            held = await _settle(lambda: sum(_held(r) for r in runners))
            relay_held = sum(_held(r) for r in relay.by_owner.values())
            grown = _rss_mib() - before
            for s in socks:  # the clients leave
                s.close()
            # released: every stream reset once its reader took nothing for 15 s
            for _ in range(360):  # a condition polled for at most 90 s
                if not any(r.session.stream_count for r in [*runners, *relay.by_owner.values()]):
                    break
                await trio.sleep(0.25)
            left = sum(r.session.stream_count for r in runners)
            relay_left = sum(r.session.stream_count for r in relay.by_owner.values())
            nursery.cancel_scope.cancel()
    print(
        f"upload: expose holds {held / 2**20:.1f} MiB, relay {relay_held / 2**20:.1f} MiB,"
        f" RSS +{grown:.0f} MiB, {left} streams left after the clients left"
    )
    # figure: 540 MiB held by expose before; now within the session cap
    assert held <= cfg.session_buffer, f"expose holds {held >> 20} MiB"
    assert grown < 64, f"RSS grew {grown:.0f} MiB for {CLIENTS} uploads"
    assert left == 0 and relay_left == 0, f"{left} streams left on expose, {relay_left} on relay"


def _expose_runners(expose: Expose) -> list[ExposeRunner]:
    """The live session of expose (there is one)."""
    runner = getattr(expose, "runner", None)
    if runner is None:  # an older trivpn (for the "before" figure): find it
        import gc

        return [o for o in gc.get_objects() if isinstance(o, ExposeRunner) and o.expose is expose]
    return [runner]


async def test_public_client_that_stops_reading_is_reset_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Loopback, trio's MockClock: a public client that reads nothing has its stream reset
    (RST on its socket) once the default 60 s stall timeout passed, not before."""

    async def big_response(stream: trio.SocketStream) -> None:
        with trio.move_on_after(600):
            await _send_big(stream)

    async with trio.open_nursery() as nursery:
        svc = await nursery.start(trio.serve_tcp, big_response, 0)
        relay, _, public = await _start(nursery, svc[0].socket.getsockname()[1], SessionConfig())
        runner = next(iter(relay.by_owner.values()))
        (client,) = await _connect_all_n(public, 1)
        client.send(b"GET /big HTTP/1.0\r\n\r\n")
        started = trio.current_time()
        await trio.sleep(30)
        assert runner.session.stream_count == 1  # half the timeout: still there
        for _ in range(120):  # virtual seconds, bounded
            if not runner.session.stream_count:
                break
            await trio.sleep(1)
        gone_after = trio.current_time() - started
        assert runner.session.stream_count == 0
        print(f"stalled public client reset after {gone_after:.1f} s (virtual)")
        assert 60 <= gone_after <= 62, gone_after  # the timeout, counted from its last progress
        reset = False
        for _ in range(100):  # what the kernel already had, then the reset (bounded)
            await trio.lowlevel.wait_readable(client)
            try:
                if not client.recv(65536):
                    break  # a clean end of file would be wrong
            except ConnectionResetError:
                reset = True
                break
            except BlockingIOError:
                continue
        client.close()
        nursery.cancel_scope.cancel()
    assert reset
