"""Bad input to `trivpn relay` / `trivpn expose` ends in one line and a non-zero exit,
never a traceback, a hang, unbounded memory or a session that dies later."""

from __future__ import annotations

import functools
import os
import pathlib
import resource
import subprocess
import sys

import pytest
import trio

import trivpn
from trivpn.cli import build_parser
from trivpn.errors import ConfigError, FatalError
from trivpn.reverse.build import build_expose, build_relay
from trivpn.reverse.expose import Expose, ExposeConfig

TOKEN = "0123456789abcdef-cli-input"
EXPOSE = ["expose", "--server", "127.0.0.1:9000", "--local", "127.0.0.1:3000"]
TREE = os.path.dirname(os.path.dirname(os.path.abspath(trivpn.__file__)))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


def cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """`trivpn ARGS` in a child (bounded: 30 s, 1 GiB: a run that would serve, read
    forever or fill memory fails instead of stalling the tests); (exit status, stderr)."""
    full = {**os.environ, "PYTHONPATH": TREE, "TRIVPN_TOKEN": TOKEN, **(env or {})}
    out = subprocess.run(
        [sys.executable, "-m", "trivpn", *args],
        env=full,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_limit_memory,
    )
    return out.returncode, out.stderr


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIVPN_TOKEN", TOKEN)


# ---------------------------------------------------------------- numeric flags


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lease", "inf"], "--lease: must be between 0 and 604800, not inf"),
        (["--lease", "nan"], "--lease: must be between 0 and 604800, not nan"),
        (["--lease", "5e9"], "--lease: must be between 0 and 604800, not 5e+09"),
        (["--idle-lease", "nan"], "--idle-lease: must be between 0 and 604800, not nan"),
        (["--idle-lease", "inf"], "--idle-lease: must be between 0 and 604800, not inf"),
        (["--port-quota", "99999999"], "--port-quota: must be between 1 and 65535"),
        (["--start-port", "70000"], "--start-port: must be between 1 and 65535"),
        (["--end-port", "70000"], "--end-port: must be between 1 and 65535"),
        (["--relay-buffer", "99999G"], "--relay-buffer: must be between 65536 and"),
        (
            ["--session-buffer", "32G", "--relay-buffer", "64G"],
            "--session-buffer: must be between 65536 and",
        ),
    ],
)
def test_relay_numeric_flags_have_the_config_file_bounds(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_relay(build_parser().parse_args(["relay", *argv]))
    assert str(ei.value).startswith(message) and "\n" not in str(ei.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-attempts", "2000000"], "--max-attempts: must be between 0 and 1000000"),
        (["--session-buffer", "1024G"], "--session-buffer: must be between 65536 and"),
    ],
)
def test_expose_numeric_flags_have_the_config_file_bounds(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        build_expose(build_parser().parse_args([*EXPOSE, *argv]))
    assert str(ei.value).startswith(message)


def test_in_range_flags_still_work() -> None:
    relay = build_relay(
        build_parser().parse_args(
            ["relay", "--lease", "604800", "--idle-lease", "0", "--port-quota", "65535"]
        )
    )
    assert relay.config.lease == 604800 and relay.config.idle_lease == 0
    expose = build_expose(build_parser().parse_args([*EXPOSE, "--max-attempts", "0"]))
    assert expose.config.attempts == 0


def test_lease_inf_on_the_command_line_is_one_line() -> None:
    rc, err = cli(["relay", "--addr", "127.0.0.1:0", "--lease", "inf"])
    assert rc == 1
    assert err == "trivpn: error: --lease: must be between 0 and 604800, not inf\n"


def test_file_value_is_still_checked_as_the_file_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("lease = 10\n")
    relay = build_relay(build_parser().parse_args(["relay", "--config", str(path)]))
    assert relay.config.lease == 10.0


# ---------------------------------------------------------------- token files


@pytest.fixture()
def not_utf8(tmp_path: pathlib.Path) -> pathlib.Path:
    f = tmp_path / "bad.tok"
    f.write_bytes(b"\xff\xfe0123456789abcdef-token\n")
    return f


def _token_runs(path: pathlib.Path) -> list[tuple[list[str], str]]:
    """Every way a token file is named: (arguments, the start of the error line)."""
    toml = path.parent / "tokens.toml"
    toml.write_text(f'tokens_file = "{path.name}"\n')
    return [
        (["relay", "--token-file", str(path)], f"cannot read --token-file {path}: "),
        (["relay", "--tokens-file", str(path)], f"cannot read the tokens file {path}: "),
        ([*EXPOSE, "--token-file", str(path)], f"cannot read --token-file {path}: "),
        (["relay", "--config", str(toml)], f"cannot read the tokens file {path}: "),
    ]


def test_token_files_that_are_not_utf8_are_one_line(not_utf8: pathlib.Path) -> None:
    for argv, start in _token_runs(not_utf8):
        with pytest.raises(ConfigError) as ei:
            build = build_expose if argv[0] == "expose" else build_relay
            build(build_parser().parse_args(argv))
        assert str(ei.value) == f"{start}not UTF-8 text (byte 0)", argv


def test_a_client_token_file_still_says_not_utf8(not_utf8: pathlib.Path) -> None:
    toml = not_utf8.parent / "clients.toml"
    toml.write_text(f'[[clients]]\nname = "a"\ntoken_file = "{not_utf8.name}"\n')
    with pytest.raises(ConfigError, match=r"line 3: clients\[1\].token_file: .*not UTF-8 text"):
        build_relay(build_parser().parse_args(["relay", "--config", str(toml)]))


@pytest.mark.parametrize(
    ("argv", "start"),
    [
        (["relay", "--token-file", "/dev/zero"], "cannot read --token-file /dev/zero: "),
        (["relay", "--tokens-file", "/dev/zero"], "cannot read the tokens file /dev/zero: "),
        ([*EXPOSE, "--token-file", "/dev/zero"], "cannot read --token-file /dev/zero: "),
    ],
)
def test_endless_token_files_are_refused(argv: list[str], start: str) -> None:
    rc, err = cli(argv)  # a child: the old code read /dev/zero forever, or ran out of memory
    assert rc == 1
    assert err == f"trivpn: error: {start}larger than 65536 bytes, not a token file\n"


def test_a_big_token_file_is_refused_and_a_small_one_read(tmp_path: pathlib.Path) -> None:
    from trivpn.reverse.configfile import MAX_TOKEN_FILE

    big = tmp_path / "big"
    big.write_text("alice:0123456789abcdef-token\n" + "#" * MAX_TOKEN_FILE)
    with pytest.raises(ConfigError, match="larger than 65536 bytes, not a token file"):
        build_relay(build_parser().parse_args(["relay", "--tokens-file", str(big)]))
    ok = tmp_path / "ok"
    ok.write_text("0123456789abcdef-from-file\r\nsecond line\n")
    relay = build_relay(build_parser().parse_args(["relay", "--token-file", str(ok)]))
    assert relay.config.tokens == {"default": b"0123456789abcdef-from-file"}


def test_a_token_that_is_not_utf8_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIVPN_TOKEN", "0123456789abcdef\udcff")  # how the OS hands b"\xff"
    with pytest.raises(ConfigError, match=r"^\$TRIVPN_TOKEN: the token is not UTF-8 text$"):
        build_relay(build_parser().parse_args(["relay"]))
    with pytest.raises(ConfigError, match=r"^--token: the token is not UTF-8 text$"):
        build_expose(build_parser().parse_args([*EXPOSE, "--token", "0123456789abcdef\udcff"]))


# ---------------------------------------------------------------- expose [[tunnels]]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            '[[tunnels]]\nlocal = ":1"\nremote_port = 20005\n'
            '[[tunnels]]\nlocal = ":2"\nremote_port = 20005\n',
            r" line 7: tunnels\[2\].remote_port: port 20005 is tunnels\[1\]'s already$",
        ),
        (
            '[[tunnels]]\nname = "a"\nlocal = ":1"\n[[tunnels]]\nname = "a"\nlocal = ":2"\n',
            r" line 6: tunnels\[2\].name: tunnel name 'a' appears twice$",
        ),
    ],
)
def test_expose_tunnels_may_not_share_a_port_or_a_name(
    tmp_path: pathlib.Path, body: str, error: str
) -> None:
    path = tmp_path / "expose.toml"
    path.write_text('server = "127.0.0.1:9000"\n' + body)
    with pytest.raises(ConfigError, match=error):
        build_expose(build_parser().parse_args(["expose", "--config", str(path)]))


def test_expose_tunnels_may_all_take_any_port_and_go_unnamed(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "expose.toml"
    path.write_text(
        'server = "127.0.0.1:9000"\n[[tunnels]]\nlocal = ":1"\n[[tunnels]]\nlocal = ":2"\n'
        '[[tunnels]]\nlocal = ":3"\nname = "a"\nremote_port = 20005\n'
    )
    expose = build_expose(build_parser().parse_args(["expose", "--config", str(path)]))
    assert [(t.remote_port, t.label) for t in expose.tunnels] == [(0, ""), (0, ""), (20005, "a")]


# ---------------------------------------------------------------- expose addresses


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--server", "127.0.0.1:0", "--local", "127.0.0.1:3000"], "--server"),
        (["--server", "127.0.0.1:9000", "--local", "127.0.0.1:0"], "--local"),
        (["--server", "127.0.0.1:9000", "--local", ":0"], "--local"),
    ],
)
def test_expose_refuses_to_dial_port_0(argv: list[str], error: str) -> None:
    with pytest.raises(ConfigError, match=f"^{error}: the port must not be 0$"):
        build_expose(build_parser().parse_args(["expose", *argv]))


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('server = "127.0.0.1:0"\nlocal = "127.0.0.1:3000"\n', "line 1: server"),
        ('server = "127.0.0.1:9000"\nlocal = ":0"\n', "line 2: local"),
    ],
)
def test_expose_file_refuses_to_dial_port_0(tmp_path: pathlib.Path, body: str, key: str) -> None:
    path = tmp_path / "expose.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=f" {key}: the port must not be 0$"):
        build_expose(build_parser().parse_args(["expose", "--config", str(path)]))


# ---------------------------------------------------------------- TLS against a plain relay


async def _tls_expose_fails(port: int) -> str:
    """The error of `expose --tls --no-reconnect` against 127.0.0.1:`port` (bounded)."""
    expose = Expose(ExposeConfig("127.0.0.1", port, "127.0.0.1", 9, TOKEN.encode(), tls=True))
    expose.config.reconnect = False
    with trio.fail_after(20), pytest.raises(FatalError) as ei:
        await expose.run()
    return str(ei.value)


async def _against_answer(answer: bytes) -> str:
    """... against a server that reads the ClientHello, answers `answer` and closes."""

    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        if answer:
            await stream.send_all(answer)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        why = await _tls_expose_fails(listeners[0].socket.getsockname()[1])
        nursery.cancel_scope.cancel()
    return why


async def test_tls_expose_says_a_plain_relay_did_not_answer_in_tls() -> None:
    from trivpn.reverse.relay import Relay, RelayConfig

    relay = Relay(
        RelayConfig("127.0.0.1", 0, start_port=41100, end_port=41110, tokens={"a": TOKEN.encode()})
    )
    async with trio.open_nursery() as nursery:
        port = await nursery.start(relay.serve)
        why = await _tls_expose_fails(port)
        nursery.cancel_scope.cancel()
    assert why == (
        f"cannot reach the relay 127.0.0.1:{port}: the TLS handshake failed: the relay did not"
        " answer in TLS (does it serve plain TCP? then leave out --tls)"
        " (not reconnecting: --no-reconnect)"
    )


async def test_tls_expose_says_the_relay_closed_during_the_handshake() -> None:
    why = await _against_answer(b"")
    assert ": the TLS handshake failed: the relay closed the connection (not" in why


async def test_tls_expose_names_a_tls_alert() -> None:
    why = await _against_answer(b"\x15\x03\x03\x00\x02\x02\x28")  # alert: handshake failure
    assert ": the TLS handshake failed: sslv3 alert handshake failure (not" in why
