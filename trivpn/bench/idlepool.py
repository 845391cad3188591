"""`python -m trivpn.bench.idlepool PROFILE COUNT`: hold COUNT idle userspace sessions.

A load generator for `python -m trivpn.bench server`: one process opens COUNT sessions to the
profile's server with the library API (userspace tunnels, no TUN devices), at most
`--concurrency` handshakes at a time, and keeps them connected (keepalive only) until its
standard input closes or `--hold` seconds pass. It reports on stdout, one line each:
``up N`` every `--every` sessions, ``ready N SECONDS`` when all are up, ``failed REASON``
for a session that could not connect. Several such processes let one server hold a thousand
clients without the clients' own memory counting against it.
"""

from __future__ import annotations

import argparse
import sys
import time

import trio

from trivpn import api
from trivpn.errors import TrivpnError
from trivpn.profile.profile import Profile, load_profile

#: Seconds one session may take to come up before it counts as failed.
CONNECT_TIMEOUT = 60.0


class Pool:
    """Counts sessions as they come up; the holders wait on `release`."""

    def __init__(self, count: int, every: int) -> None:
        self.count = count
        self.every = every
        self.up = 0
        self.failed = 0
        self.started = time.monotonic()
        self.release = trio.Event()

    def report_up(self) -> None:
        self.up += 1
        if self.up % self.every == 0 or self.up == self.count:
            print(f"up {self.up}", flush=True)
        if self.up == self.count:
            print(f"ready {self.up} {time.monotonic() - self.started:.3f}", flush=True)

    def report_failed(self, reason: str) -> None:
        self.failed += 1
        print(f"failed {reason}", flush=True)


async def _hold_one(profile: Profile, pool: Pool, gate: trio.Semaphore) -> None:
    await gate.acquire()
    released = False
    try:
        async with api.connect(profile, reconnect=False, connect_timeout=CONNECT_TIMEOUT):
            gate.release()
            released = True
            pool.report_up()
            await pool.release.wait()
    except Exception as exc:  # a load generator reports every failure and carries on
        pool.report_failed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    finally:
        if not released:
            gate.release()


async def _watch_stdin(pool: Pool) -> None:
    """Release every session when the parent closes our standard input."""
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some(4096):
        pass
    pool.release.set()


async def run(profile: Profile, count: int, concurrency: int, hold: float, every: int) -> int:
    pool = Pool(count, every)
    gate = trio.Semaphore(concurrency)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_stdin, pool)
        with trio.move_on_after(hold):
            async with trio.open_nursery() as holders:
                for _ in range(count):
                    holders.start_soon(_hold_one, profile, pool, gate)
        pool.release.set()
        nursery.cancel_scope.cancel()
    return 0 if pool.failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trivpn.bench.idlepool", description=__doc__.splitlines()[0])
    p.add_argument("profile")
    p.add_argument("count", type=int)
    p.add_argument("--concurrency", type=int, default=32, help="handshakes at a time (default 32)")
    p.add_argument("--hold", type=float, default=600.0, help="seconds to hold at most (default 600)")
    p.add_argument("--every", type=int, default=50, help="report every N sessions (default 50)")
    a = p.parse_args(argv)
    if not 1 <= a.count <= 5000 or not 1 <= a.concurrency <= 512 or not 1 <= a.hold <= 3600:
        p.error("count must be 1..5000, concurrency 1..512, hold 1..3600 s")
    try:
        profile = load_profile(a.profile)
    except (TrivpnError, OSError) as exc:
        print(f"idlepool: error: {exc}", file=sys.stderr)
        return 2
    return trio.run(run, profile, a.count, a.concurrency, a.hold, max(1, a.every))


if __name__ == "__main__":
    sys.exit(main())
