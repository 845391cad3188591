"""Helpers for tests that drive `python -m trivpn …` as a subprocess: bounded waits only."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from trivpn.testing.netns import Netns

POLL = 0.05


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL (a test never leaves a process behind)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def read_until(proc: subprocess.Popen[bytes], needle: str, timeout: float) -> list[str]:
    """Lines of `proc`'s stdout up to the first one containing `needle` (bounded in time).

    Raises AssertionError with everything read so far when the line does not come in time
    or the process ends first.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    lines: list[str] = []
    buf = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk: bytes | None = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk.decode(errors="replace")
            *done, buf = buf.split("\n")
            lines.extend(done)
            if any(needle in ln for ln in done):
                return lines
        elif chunk == b"" or proc.poll() is not None:
            break
        else:
            time.sleep(POLL)
    raise AssertionError(f"no {needle!r} within {timeout}s; output so far:\n" + "\n".join([*lines, buf]))


def rest_of_output(proc: subprocess.Popen[bytes]) -> str:
    """Whatever `proc` printed after `read_until` stopped reading (call once it has exited)."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), True)
    return proc.stdout.read().decode(errors="replace")


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(POLL * 2)
    raise AssertionError(f"{what} did not happen within {timeout}s")


def wait_for_text(path: Path, needle: str, timeout: float, *, count: int = 1) -> str:
    """Wait until `path` (a log) contains `needle` `count` times; return its text."""
    wait_until(
        lambda: path.read_text(errors="replace").count(needle) >= count,
        timeout,
        f"{count}× {needle!r} in {path.name}:\n{path.read_text(errors='replace')[-3000:]}",
    )
    return path.read_text(errors="replace")


def namespace_state(ns: Netns) -> str:
    """Interfaces (by name), addresses and routes of a namespace: what a run must not leave.

    The veth's link-local address may appear late (kernel DAD) and is not ours: left out.
    """
    links = ns.run(["ip", "-o", "link"]).stdout
    names = sorted(ln.split(":")[1].strip() for ln in links.splitlines() if ":" in ln)
    out = [" ".join(names)]
    for argv in (["ip", "-o", "addr"], ["ip", "route"], ["ip", "-6", "route"]):
        out.extend(ln for ln in ns.run(argv).stdout.splitlines() if "fe80::" not in ln)
    return "\n".join(out)
