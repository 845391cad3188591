"""user/group: name resolution and the kept files (the drop itself, which cannot be undone
in the test process, is proven on a running server in tests/integration/test_serve_privdrop.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trivpn.errors import ConfigError
from trivpn.server.privdrop import KeptFile, PrivilegeDrop


def test_names_are_resolved_at_once() -> None:
    with pytest.raises(ConfigError, match="no such user"):
        PrivilegeDrop("no-such-user-trivpn", None)
    with pytest.raises(ConfigError, match="no such group"):
        PrivilegeDrop(None, "no-such-group-trivpn")
    nothing = PrivilegeDrop(None, None)
    assert not nothing.active and nothing.keep("/nonexistent/x", 0o600) is None
    nothing.drop()  # a no-op without user/group


def test_kept_file_is_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "status.log"
    drop = PrivilegeDrop("nobody", None)
    kept = drop.keep(path, 0o600)
    assert isinstance(kept, KeptFile) and path.stat().st_mode & 0o777 == 0o600
    kept.write(path, "a long first version\n")
    inode = path.stat().st_ino
    kept.replace(str(path), "short\n")
    assert path.read_text() == "short\n" and path.stat().st_ino == inode  # same file, truncated
    drop.close()
    with pytest.raises(ConfigError, match="cannot open"):
        KeptFile(tmp_path / "missing-dir" / "x", 0o600)
