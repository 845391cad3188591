"""`trivpn demo` as a user runs it: exit code, what it prints, and nothing left behind
(no namespace, no process, no temporary directory), also when stopped half-way."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn.testing.process import read_until, rest_of_output, stop_process

pytestmark = pytest.mark.root

DEMO_TIMEOUT = 120
_NAMESPACES = re.compile(r"created the namespaces (\S+) \(.*\) and (\S+) \(")
_WORKDIR = re.compile(r"in (/\S+)/pki:")


def _namespaces() -> set[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True)
    return {line.split()[0] for line in r.stdout.splitlines() if line.strip()}


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _assert_nothing_left(output: str) -> None:
    names = _NAMESPACES.search(output)
    workdir = _WORKDIR.search(output)
    assert names and workdir, output
    assert not {names.group(1), names.group(2)} & _namespaces(), output
    assert not Path(workdir.group(1)).exists(), output
    assert _processes_mentioning(workdir.group(1)) == [], output


def test_demo_runs_and_cleans_up() -> None:
    r = subprocess.run([sys.executable, "-m", "trivpn", "demo", "--iperf-seconds", "1"],
                       capture_output=True, text=True, timeout=DEMO_TIMEOUT, stdin=subprocess.DEVNULL)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "tunnel up with address 10.8.0.2" in out
    assert re.search(r"ping from the client .*: ([1-5]) of 5 replies", out), out
    assert re.search(r"6\. iperf3 .*: \d+ Mbit/s received", out) or "iperf3 is not installed" in out, out
    assert "deleted both namespaces" in out
    _assert_nothing_left(out)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_demo_stopped_half_way_removes_everything(sig: signal.Signals, code: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "trivpn", "demo"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines = read_until(proc, "3. started 'trivpn serve", 60)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
        out = "\n".join(lines) + "\n" + rest_of_output(proc)
    finally:
        stop_process(proc)
    assert rc == code, out
    assert "stopping: removing everything the demo made" in out
    _assert_nothing_left(out)
