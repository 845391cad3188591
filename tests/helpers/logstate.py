"""Tests that call `trivpn.cli.main` in-process: it points the `trivpn` logger at this
test's (soon closed) stdout and stops propagation, which would blind later `caplog` tests.
`kept_logging()` puts the trivpn and root loggers back as they were."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def kept_logging() -> Iterator[None]:
    ours, root = logging.getLogger("trivpn"), logging.getLogger()
    saved = (ours.handlers[:], ours.level, ours.propagate, root.handlers[:], root.level)
    try:
        yield
    finally:
        ours.handlers[:], ours.level, ours.propagate = saved[0], saved[1], saved[2]
        root.handlers[:], root.level = saved[3], saved[4]
