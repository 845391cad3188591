"""What the benchmarks record about the machine, the interpreter and the commit, so a
published table says what it measured and where (shared by `vpn`, `server`, `profile`)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _first_line(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return ((r.stdout or r.stderr).strip().splitlines() or ["unknown"])[0]


def describe_machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "python_start_ms": interpreter_start_ms(),
        "openvpn": _first_line(["openvpn", "--version"]),
        "iperf3": _first_line(["iperf3", "--version"]),
        # new namespaces inherit it, so it is the inner TCP's unless a bench sets -C
        "tcp_congestion_control": _read("/proc/sys/net/ipv4/tcp_congestion_control"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": source_commit(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "unknown"


def interpreter_start_ms(runs: int = 5) -> float | None:
    """Median wall time of `python -c pass` with the interpreter under test: what every trivpn
    start pays before its first import. It shows when an environment makes it costly (a
    `.pth` file in site-packages runs at every start; a venv made as the README says has
    none), which start → ping includes and trivpn cannot change."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        try:
            r = subprocess.run([sys.executable, "-c", "pass"], capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if r.returncode != 0:
            return None
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 1)


#: A bare interpreter start above this (ms) is worth a warning: something in site-packages
#: runs at every start (a venv made as the README says starts in ~10 ms here).
SLOW_INTERPRETER_MS = 25.0


def machine_report(machine: dict[str, Any]) -> str:
    """The machine line the benchmarks print first, and a warning when the interpreter's own
    start is slow enough to distort start → ping and peak RSS."""
    line = (f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}, "
            f"kernel {machine['kernel']}, Python {machine['python']} ({machine['python_executable']}, "
            f"starts in {machine['python_start_ms']} ms), {machine['openvpn']}")
    start = machine.get("python_start_ms")
    if start is not None and start > SLOW_INTERPRETER_MS:
        line += (f"\nwarning: this Python takes {start} ms to start before any trivpn import (a .pth "
                 "file in its site-packages?); start → ping and RSS include that. Run the bench "
                 "from a venv made as the README says.")
    return line


def source_commit() -> str:
    """The git commit of the trivpn being measured (with "+dirty" for local changes), so a
    published table names what it measured; "unknown" outside a checkout."""
    here = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
