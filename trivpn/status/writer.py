"""When to rewrite the status file, and how to replace it without a reader seeing half of it.

`StatusWriter` is the sans-IO clock of `status FILE [N]`: the first write is due at once (so
the file exists as soon as the service starts), then every `interval` seconds after the last
write. `get_timer()` is the next deadline, `handle_timer(now)` says whether a write is due and
re-arms. An interval of 0 means no periodic rewrite: only `request()` (e.g. on SIGUSR2 or at
shutdown) makes one due. `text()` renders the snapshot in the configured version.

OpenVPN truncates and rewrites its file in place, so a reader can see a half-written report;
`write_status_file` writes a temporary file in the same directory and renames it over the
target, which is atomic on POSIX. It is blocking IO: a trio service runs it in a thread.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import tzinfo
from pathlib import Path

from trivpn.status.format import StatusVersion, format_client_status, format_server_status
from trivpn.status.model import ClientStatus, ServerStatus, StatusModelError

#: OpenVPN's default refresh interval for `status FILE` without N.
DEFAULT_INTERVAL = 60.0
#: Mode of the written file: readable by monitoring tools that do not run as root. OpenVPN
#: creates its file 0600 (it lists names and addresses); pass mode=0o600 to match it.
DEFAULT_MODE = 0o644


class StatusWriter:
    """Schedule of status rewrites for one `status FILE [N]` option (pure: `now` passed in)."""

    def __init__(
        self,
        now: float,
        interval: float = DEFAULT_INTERVAL,
        version: StatusVersion = 1,
        *,
        tz: tzinfo | None = None,
    ) -> None:
        if not interval >= 0:  # also refuses NaN
            raise StatusModelError(f"status interval must be >= 0 seconds, not {interval!r}")
        if version not in (1, 2, 3):
            raise StatusModelError(f"status version must be 1, 2 or 3, not {version!r}")
        self.interval = float(interval)
        self.version: StatusVersion = version
        self._tz = tz
        self._due: float | None = now

    def get_timer(self) -> float | None:
        """When the next write is due, or None when none is scheduled."""
        return self._due

    def request(self, now: float) -> None:
        """Make a write due at `now` (an explicit refresh), whatever the schedule."""
        self._due = now

    def handle_timer(self, now: float) -> bool:
        """True when a write is due at `now`; the next one is then `interval` later."""
        if self._due is None or now < self._due:
            return False
        self._due = now + self.interval if self.interval > 0 else None
        return True

    def text(self, snapshot: ServerStatus | ClientStatus) -> str:
        """The file's content for `snapshot` (`\\n` line ends, as OpenVPN's file)."""
        if isinstance(snapshot, ServerStatus):
            return format_server_status(snapshot, self.version, tz=self._tz)
        return format_client_status(snapshot, tz=self._tz)


def write_status_file(path: Path, text: str, mode: int = DEFAULT_MODE) -> None:
    """Replace `path` with `text` atomically: temp file in the same directory, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
