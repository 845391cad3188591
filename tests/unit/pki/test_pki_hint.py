"""The command `pki init` tells the user to run as root must work under sudo."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trivpn.pki.cli import root_command


def test_the_hint_names_the_scripts_full_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`sudo trivpn` does not search a virtual environment's bin/: the full path does."""
    script = tmp_path / "venv" / "bin" / "trivpn"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(script), "pki", "init"])
    assert root_command() == str(script)


def test_run_as_a_module_the_hint_names_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/somewhere/trivpn/__main__.py", "pki", "init"])
    assert root_command() == f"{sys.executable} -m trivpn"
