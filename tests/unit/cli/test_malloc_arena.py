"""`trivpn connect` asks glibc for one malloc arena before any thread starts.

Each thread that allocates would otherwise get an arena of its own (a 64 MB-aligned heap in
/proc/self/maps) that keeps its freed packet buffers; docs/performance.md has the RSS it
saves."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trivpn import cli

ROOT = Path(__file__).resolve().parents[3]

#: four threads allocate buffers too large for pymalloc, then count the thread heaps
PROBE = """
import sys, threading
from trivpn.cli_common import one_malloc_arena
if sys.argv[1] == "one":
    assert one_malloc_arena()
ready, done = threading.Barrier(5), threading.Event()
def work():
    keep = [bytes(3000) for _ in range(2000)]
    ready.wait()
    done.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads:
    t.start()
ready.wait()
heaps = 0
for line in open("/proc/self/maps"):
    parts = line.split()
    start = int(parts[0].split("-")[0], 16)
    heaps += len(parts) == 5 and parts[1].startswith("rw") and start % (64 << 20) == 0
done.set()
for t in threads:
    t.join()
print(heaps)
"""


def _heaps(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-P", "-c", PROBE, mode], capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's arena limit is glibc's")
def test_threads_share_one_arena_once_asked() -> None:
    assert _heaps("default") >= 2  # the probe does see per-thread arenas
    assert _heaps("one") == 0


def test_only_connect_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "one_malloc_arena", lambda: calls.append("arena") or True)

    def fake_run(handler: Any, args: Any) -> int:
        calls.append(args.command)
        return 0

    monkeypatch.setattr(cli.trio, "run", fake_run)
    ours = logging.getLogger("trivpn")  # main sets up logging: put it back afterwards
    saved = (ours.handlers[:], ours.level, ours.propagate)
    try:
        assert cli.main(["connect", "client.ovpn", "-q"]) == 0
        assert cli.main(["ping", "client.ovpn", "10.8.0.1", "-q"]) == 0
    finally:
        ours.handlers[:], ours.propagate = saved[0], saved[2]
        ours.setLevel(saved[1])
    assert calls == ["arena", "connect", "ping"]
