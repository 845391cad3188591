"""`main` parses a core command (connect, ping, status) with a root parser holding only
that command: the same answers as the whole command line, without building the other
sub-commands' parsers or importing the plugin modules (docs/performance.md, start-up)."""

from __future__ import annotations

import contextlib
import io

import pytest
from helpers.fresh import fresh_stdout

from trivpn import cli

CASES = [
    ["connect", "--help"],
    ["connect"],
    ["connect", "a.ovpn", "--bogus"],
    ["connect", "a.ovpn", "-vv", "--kill-switch", "--status", "f", "5", "--no-dns"],
    ["connect", "a.ovpn", "-q", "--log", "f", "-4", "--low-latency"],
    ["ping", "a.ovpn", "10.8.0.1", "-c", "2", "-W", "1"],
    ["ping", "--help"],
    ["ping", "a.ovpn"],
    ["status", "--help"],
    ["status", "/run/x.sock", "--json", "--timeout", "3"],
]


def _parse(only: str | None, argv: list[str]) -> tuple[object, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result: object = vars(cli.build_parser(only).parse_args(argv))
        except SystemExit as exc:
            result = ("exit", exc.code)
    return result, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv", CASES, ids=" ".join)
def test_a_core_command_parses_as_with_the_whole_command_line(argv: list[str]) -> None:
    only = cli.core_command(argv)
    assert only == argv[0]
    assert _parse(only, argv) == _parse(None, argv)


def test_anything_else_gets_the_whole_command_line() -> None:
    for argv in ([], ["--help"], ["--version"], ["serve", "x.conf"], ["relay"], ["conect", "a.ovpn"]):
        assert cli.core_command(argv) is None
    # a mistyped command still lists every command
    result, _out, err = _parse(None, ["conect", "a.ovpn"])
    assert result == ("exit", 2) and "serve" in err and "relay" in err


def test_connect_imports_no_plugin_module() -> None:
    code = (
        "import sys, trivpn.cli as c; c.build_parser(c.core_command(['connect', 'a.ovpn']))"
        ".parse_args(['connect', 'a.ovpn']); print(sorted(m for m in c.PLUGIN_COMMANDS if m in sys.modules))"
    )
    assert fresh_stdout(code) == "[]"
