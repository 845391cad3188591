"""`ifconfig-pool-persist FILE [SECONDS]`: the pool's leases across server restarts.

Read once at start (bounded; a missing file is an empty one, a damaged line a warning),
written every SECONDS (default 600) in a worker thread, and once more when the server
exits, from its cleanups (synchronously: every task is gone by then, and the file is
small). Every write is atomic: a temporary file in the same directory, flushed, then
renamed over the old one, so a crash never leaves half a file. SECONDS 0 makes the file
read-only and its entries reserved for their common names, as in OpenVPN.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable

import trio

from trivpn.server.config_model import PoolPersist
from trivpn.server.pool import AddressPool
from trivpn.server.pool_persist import MAX_PERSIST_BYTES, dump_persist, parse_persist
from trivpn.workers.manager import WorkersManager

__all__ = ["load_pool_persist", "run_persist_writer", "start_pool_persist", "write_pool_persist"]

log = logging.getLogger("trivpn.server")


def load_pool_persist(pool: AddressPool, persist: PoolPersist, now: float) -> int:
    """Pre-assign the file's common names to their old addresses; how many entries."""
    try:
        with open(persist.path, "rb") as f:
            data = f.read(MAX_PERSIST_BYTES + 1)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("ifconfig-pool-persist: cannot read %s: %s", persist.path, exc.strerror or exc)
        return 0
    parsed = parse_persist(data)
    for warning in (*parsed.warnings, *pool.load_persist(list(parsed.entries), persist.seconds == 0, now)):
        log.warning("%s", warning)
    return len(parsed.entries)


def _replace(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pool-persist.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


Replace = Callable[[str, str], None]


def write_pool_persist(pool: AddressPool, persist: PoolPersist, replace: Replace = _replace) -> None:
    """Write the file now (no-op for a read-only SECONDS 0 file); errors are logged."""
    if persist.seconds == 0:
        return
    text, skipped = dump_persist(pool)
    if skipped:
        log.warning("ifconfig-pool-persist: %d common name(s) cannot be written and were left out", skipped)
    try:
        replace(persist.path, text)
    except OSError as exc:
        log.warning("ifconfig-pool-persist: cannot write %s: %s", persist.path, exc.strerror or exc)


async def run_persist_writer(pool: AddressPool, persist: PoolPersist, replace: Replace = _replace) -> None:
    """Write the file every `persist.seconds` (the text is made here, written in a thread)."""
    if persist.seconds <= 0:
        return
    while True:
        await trio.sleep(persist.seconds)
        text, _ = dump_persist(pool)
        try:
            await trio.to_thread.run_sync(replace, persist.path, text)
        except OSError as exc:
            log.warning("ifconfig-pool-persist: cannot write %s: %s", persist.path, exc.strerror or exc)


def start_pool_persist(m: WorkersManager, pool: AddressPool, persist: PoolPersist, replace: Replace | None = None) -> None:
    """Load the file now, write it periodically and when the server's tree exits (through
    `replace`: the atomic rename, or an in-place rewrite after a privilege drop)."""
    load_pool_persist(pool, persist, trio.current_time())
    how = replace or _replace
    m.add_cleanup(lambda: write_pool_persist(pool, persist, how))
    m.start_service("pool-persist", run_persist_writer, pool, persist, how)
