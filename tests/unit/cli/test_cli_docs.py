"""docs/cli.md is the command reference: it must name every command and every option."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from trivpn import cli, cli_common

DOC = Path(__file__).resolve().parents[3] / "docs" / "cli.md"


def _leaves() -> list[tuple[str, argparse.ArgumentParser]]:
    return cli_common._leaves(cli.build_parser(), "")


@pytest.mark.parametrize("name", [name for name, _ in _leaves()])
def test_reference_names_the_command_and_each_option(name: str) -> None:
    text = DOC.read_text()
    assert f"trivpn {name}" in text, f"docs/cli.md does not describe 'trivpn {name}'"
    parser = dict(_leaves())[name]
    missing = [
        opt
        for action in parser._actions
        for opt in action.option_strings
        if opt not in ("-h", "--help") and action.help != argparse.SUPPRESS and f"`{opt}" not in text
    ]
    assert not missing, f"docs/cli.md lacks {missing} of 'trivpn {name}'"
