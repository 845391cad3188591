"""The flags every sub-command shares (-v/-vv/-q/--log/--debug), the examples in every
--help, and `trivpn ping`'s iputils-style exit status (0 replies, 1 none, 2 error)."""

from __future__ import annotations

import argparse
import logging
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from helpers.logstate import kept_logging
from helpers.profiles import shared_pki
from helpers.serving import answer_echo, client_profile, running_server, server_config

from trivpn import cli, cli_common

BOUND = 60


def _leaves() -> list[tuple[str, argparse.ArgumentParser]]:
    return cli_common._leaves(cli.build_parser(), "")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    with kept_logging():
        yield


def test_every_command_is_listed() -> None:
    names = {name for name, _ in _leaves()}
    assert {"connect", "ping", "serve", "relay", "expose", "manage", "tunnel", "demo",
            "pki init", "pki client", "pki revoke"} <= names


@pytest.mark.parametrize("name", [name for name, _ in _leaves()])
def test_every_command_has_the_shared_flags_and_examples(name: str) -> None:
    parser = dict(_leaves())[name]
    flags = parser._option_string_actions
    for flag in ("-v", "--verbose", "-q", "--quiet", "--log", "--debug", "--help"):
        assert flag in flags, f"trivpn {name} lacks {flag}"
    text = parser.format_help()
    assert "examples:" in text, f"trivpn {name} --help has no examples"
    assert re.search(r"^  (sudo )?trivpn \S", text.split("examples:", 1)[1], re.M), text


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def test_verbosity_levels() -> None:
    ours = logging.getLogger("trivpn")
    for argv, level in ((["-q"], logging.WARNING), ([], logging.INFO), (["-v"], logging.DEBUG)):
        args = _parse("serve", "x.conf", *argv)
        cli_common.setup_logging(args.verbose, args.quiet, args.log)
        assert ours.level == level
    args = _parse("pki", "init", "d", "-vv")
    assert args.verbose == 2
    cli_common.setup_logging(args.verbose, args.quiet, args.log)
    assert logging.getLogger().level == logging.DEBUG  # other libraries too


def test_log_file_gets_dated_lines_and_is_private(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "trivpn.log"
    cli_common.setup_logging(0, False, str(log))
    logging.getLogger("trivpn.test").info("hello %s", "file")
    logging.getLogger("trivpn.test").warning("careful")
    lines = log.read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d hello file", lines[0]), lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d warning: careful", lines[1]), lines
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert capsys.readouterr().out == ""  # the log went to the file, not the terminal


def test_a_logged_exception_is_named_on_its_line_and_traced_only_with_debug() -> None:
    """`log.exception("internal error in the session from %s", peer)` used to print the
    message alone: the exception was dropped by the formatter, even with --debug."""
    def record() -> logging.LogRecord:
        try:
            raise OverflowError("cannot convert float infinity\nto integer")
        except OverflowError:
            return logging.LogRecord("trivpn.reverse", logging.ERROR, __file__, 1,
                                     "internal error in the session from %s", ("127.0.0.1:1",), sys.exc_info())

    plain = cli_common.LogFormatter().format(record())
    assert re.fullmatch(r"\d\d:\d\d:\d\d error: internal error in the session from 127.0.0.1:1 "
                        r"\(OverflowError: cannot convert float infinity to integer\)", plain), plain
    traced = cli_common.LogFormatter(tracebacks=True).format(record()).splitlines()
    assert traced[0] == plain.splitlines()[0] and traced[1] == "Traceback (most recent call last):", traced
    quiet = logging.LogRecord("trivpn", logging.INFO, __file__, 1, "no exception here", (), None)
    assert cli_common.LogFormatter(tracebacks=True).format(quiet).endswith(" no exception here")


def test_log_file_records_the_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.log"
    rc = cli.main(["pki", "client", str(tmp_path / "missing"), "alice", "--log", str(log)])
    assert rc == 1
    assert "missing" in capsys.readouterr().err
    assert "error:" in log.read_text()


def test_unwritable_log_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ping", "p.ovpn", "10.0.0.1", "--log", str(tmp_path / "no" / "dir.log")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--log" in err[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["ping", "{profile}", "not-an-address"],
        ["ping", "{profile}", "10.8.0.1", "--count", "0"],
        ["ping", "{missing}", "10.8.0.1"],
    ],
)
def test_ping_errors_exit_2(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "p.ovpn"
    profile.write_text("client\ndev tun\nremote 127.0.0.1 1\n")
    args = [a.format(profile=profile, missing=tmp_path / "nope.ovpn") for a in argv]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trivpn: error:"), err


def test_other_commands_still_exit_1(tmp_path: Path) -> None:
    assert cli.main(["connect", str(tmp_path / "nope.ovpn")]) == 1


@pytest.mark.parametrize(("answer", "code"), [(True, 0), (False, 1)])
async def test_ping_exit_status_against_a_userspace_server(answer: bool, code: int, tmp_path: Path) -> None:
    """A real `trivpn ping` process against trivpn's server on 127.0.0.1 (no root)."""
    pki = shared_pki()
    seen: list[bytes] = []
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki)) as (server, tun), trio.open_nursery() as nursery:
            if answer:
                nursery.start_soon(answer_echo, tun, seen)
            profile = tmp_path / "c.ovpn"
            profile.write_text(client_profile(pki, server.addresses[0][1]))
            r = await trio.run_process(
                [sys.executable, "-m", "trivpn", "ping", str(profile), "10.8.0.1", "-c", "2",
                 "-i", "0.1", "-W", "1", "-q"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
            nursery.cancel_scope.cancel()
    out = r.stdout.decode()
    assert r.returncode == code, out + r.stderr.decode()
    assert "2 packets transmitted" in out
    assert "tunnel up" not in out  # -q: only warnings from the log


def test_ctrl_c_during_the_imports_is_one_line_not_a_traceback() -> None:
    """The entry point imports the command line inside its own try: a KeyboardInterrupt
    before `cli.main` reached its handler (the imports, argument parsing) printed a
    traceback."""
    import subprocess

    code = ("import sys, trivpn.cli as c\n"
            "def interrupted(argv=None):\n    raise KeyboardInterrupt\n"
            "c.main = interrupted\n"
            "import trivpn.__main__ as m\nsys.exit(m.main())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr) == (130, "interrupted\n")


@pytest.mark.parametrize(("flag", "named"), [("-4", "-4/-6"), ("-6", "-4/-6"), ("--no-reconnect", "--no-reconnect")])
def test_manage_refuses_the_client_flags_it_cannot_pass_on(
    flag: str, named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`manage` takes connect's flags, but -4/-6/--no-reconnect never reached the tunnel
    process: the run silently used both families and reconnected."""
    assert cli.main(["manage", "/nonexistent/client.ovpn", flag]) == 1
    err = capsys.readouterr().err
    assert err == f"trivpn: error: {named} is not supported by trivpn manage (use trivpn connect)\n"


def test_ping_refuses_a_scoped_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fd00:8::1%lo was pinged, and every reply (from fd00:8::1) ignored: 100% loss, exit 1."""
    assert cli.main(["ping", str(tmp_path / "p.ovpn"), "fd00:8::1%lo"]) == 2
    assert capsys.readouterr().err == (
        "trivpn: error: TARGET 'fd00:8::1%lo': a %scope means nothing inside the tunnel\n"
    )
