"""Running a few lines in a fresh interpreter: what a module set imports can only be seen
in a process that has imported nothing else yet (the test process has it all)."""

from __future__ import annotations

import subprocess
import sys


def fresh_stdout(code: str) -> str:
    """Run `code` with `python -c` (bounded: 60 s; a failure raises); its stdout, stripped."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()
