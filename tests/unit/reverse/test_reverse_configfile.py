"""`relay --config` / `expose --config` (issue 15): TOML files, flags override them, and
every kind of mistake is one line naming the file, the line or key, and the problem."""

from __future__ import annotations

import argparse
import logging
import pathlib
import re

import pytest

from trivpn.cli import build_parser, main
from trivpn.errors import ConfigError
from trivpn.reverse.build import build_expose, build_relay
from trivpn.reverse.cli import TOKEN_ENV
from trivpn.reverse.configfile import load_expose, load_relay

TOKEN = "0123456789abcdef-token"
ROOT = pathlib.Path(__file__).parents[3]


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def _args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _write(tmp_path: pathlib.Path, text: str, name: str = "c.toml") -> str:
    f = tmp_path / name
    f.write_text(text)
    return str(f)


RELAY = f"""
addr = "127.0.0.1:9443"
start_port = 20000
end_port = 20099
lease = 120
idle_lease = 2
port_quota = 3
bandwidth = "10 MiB/s"
heartbeat = 5
http_log = false
metrics_addr = "127.0.0.1:9100"

[limits]
max_pre_auth = 100
max_failures = 3
session_buffer = 8388608
max_streams = 1000

[[clients]]
name = "alice"
token = "{TOKEN}"
port_quota = 2
bandwidth = "2 MiB/s"

[[clients]]
name = "bob"
token_file = "bob.token"
"""


def test_relay_file_sets_everything(tmp_path: pathlib.Path) -> None:
    (tmp_path / "bob.token").write_text("bob-token-0123456789\n")  # relative to the file
    path = _write(tmp_path, RELAY)
    relay = build_relay(_args(["relay", "--config", path]))
    c = relay.config
    assert (c.host, c.port, c.start_port, c.end_port) == ("127.0.0.1", 9443, 20000, 20099)
    assert (c.lease, c.idle_lease, c.port_quota, c.observe_http) == (120, 2, 3, False)
    assert c.bandwidth == 10 * 1024 * 1024 and c.session.heartbeat == 5
    assert c.tokens == {"alice": TOKEN.encode(), "bob": b"bob-token-0123456789"}
    assert c.clients["alice"].port_quota == 2 and c.clients["alice"].bandwidth == 2 * 1024**2
    assert c.clients["bob"].port_quota is None
    assert (c.guard.max_pre_auth, c.guard.max_failures) == (100, 3)
    assert (c.session.session_buffer, c.session.max_streams) == (8388608, 1000)
    assert relay.allocator.quota("alice") == 2 and relay.allocator.quota("bob") == 3


def test_flags_override_the_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "bob.token").write_text("bob-token-0123456789\n")
    path = _write(tmp_path, RELAY)
    argv = ["relay", "--config", path, "--start-port", "30000", "--end-port", "30009"]
    argv += ["--lease", "7", "--port-quota", "9", "--bandwidth", "1 MiB/s"]
    c = build_relay(_args(argv)).config
    assert (c.start_port, c.end_port, c.lease, c.port_quota) == (30000, 30009, 7, 9)
    assert c.bandwidth == 1024 * 1024
    assert c.idle_lease == 2  # not given on the command line: the file's value
    # a token on the command line replaces the file's clients
    c = build_relay(_args(["relay", "--config", path, "--token", "x" * 20])).config
    assert c.tokens == {"default": b"x" * 20} and c.clients == {}
    # a flag set to its default value still counts as given
    c = build_relay(_args(["relay", "--config", path, "--start-port", "10000"])).config
    assert c.start_port == 10000


EXPOSE = f"""
server = "relay.example.net:9000"
token = "{TOKEN}"
tls = true
max_attempts = 0
reconnect = false

[[tunnels]]
name = "web"
local = "127.0.0.1:3000"
remote_port = 10080

[[tunnels]]
local = ":22"
"""


def test_expose_file_with_two_tunnels(tmp_path: pathlib.Path) -> None:
    path = _write(tmp_path, EXPOSE)
    e = build_expose(_args(["expose", "--config", path]))
    c = e.config
    assert (c.server_host, c.server_port, c.token) == ("relay.example.net", 9000, TOKEN.encode())
    assert c.tls and not c.reconnect and c.attempts == 0
    assert [(t.local_host, t.local_port, t.remote_port, t.label) for t in e.tunnels] == [
        ("127.0.0.1", 3000, 10080, "web"),
        ("127.0.0.1", 22, 0, ""),
    ]
    # --local on the command line replaces the file's tunnels; --server overrides too
    e = build_expose(_args(["expose", "--config", path, "--local", ":8080", "--server", "other:1"]))
    assert [(t.local_port, t.remote_port) for t in e.tunnels] == [(8080, 0)]
    assert e.config.server_host == "other"


def test_expose_needs_server_local_and_token() -> None:
    with pytest.raises(ConfigError, match="needs --server"):
        build_expose(_args(["expose", "--local", ":1", "--token", TOKEN]))
    with pytest.raises(ConfigError, match="needs --local"):
        build_expose(_args(["expose", "--server", "r:1", "--token", TOKEN]))
    with pytest.raises(ConfigError, match="no token"):
        build_expose(_args(["expose", "--server", "r:1", "--local", ":1"]))
    with pytest.raises(ConfigError, match="no token"):
        build_relay(_args(["relay"]))


def test_the_shipped_examples_load(tmp_path: pathlib.Path) -> None:
    relay = load_relay(str(ROOT / "contrib" / "systemd" / "relay.toml"))
    assert relay.clients == [] and relay.values["tokens_file"].endswith("tokens")
    expose = load_expose(str(ROOT / "contrib" / "systemd" / "expose.toml"))
    assert len(expose.tunnels) == 2


# ------------------------------------------------------------------------------ errors

BAD_RELAY = [
    # (file text, expected message after the path)
    (
        'start_port = 10000\nend_port = "x"\n',
        r" line 2: end_port: must be an integer, not a string",
    ),
    ("start_port = 0\n", r" line 1: start_port: must be between 1 and 65535, not 0"),
    ("start_prot = 10000\n", r" line 1: start_prot: unknown key \(did you mean 'start_port'\?\)"),
    ("lease = true\n", r" line 1: lease: must be a number, not a boolean"),
    ('bandwidth = "fast"\n', r" line 1: bandwidth: cannot read 'fast' as a rate"),
    ("bandwidth = 10\n", r" line 1: bandwidth: a rate must be between"),
    ('addr = "nocolon"\n', r" line 1: addr: must be HOST:PORT"),
    ("http_log = 1\n", r" line 1: http_log: must be true or false, not an integer"),
    ('token = "short"\n', r" line 1: token: the token is 5 bytes, at least 16 needed"),
    ("limits = 3\n", r" line 1: limits: must be a table, not an integer"),
    ("[limits]\nmax_stream = 5\n", r" line 2: limits.max_stream: unknown key \(did you mean"),
    ("[limits]\nmax_streams = 0\n", r" line 2: limits.max_streams: must be between 1 and"),
    ('clients = "alice"\n', r" line 1: clients: must be an array of tables"),
    ("[[clients]]\nport_quota = 2\n", r" line 1: clients\[1\]: a client needs a name"),
    (
        f'[[clients]]\nname = "a"\ntoken = "{TOKEN}"\n[[clients]]\nname = "a"\n',
        r" line 5: clients\[2\].name: client name 'a' appears twice",
    ),
    (
        f'[[clients]]\nname = "a"\ntoken = "{TOKEN}"\ntoken_file = "f"\n',
        r" line 1: clients\[1\]: client a: give exactly one of token, token_file",
    ),
    (
        '[[clients]]\nname = "a"\ntoken_file = "missing"\n',
        r" line 3: clients\[1\].token_file: cannot read .*missing: No such file",
    ),
    (
        f'[[clients]]\nname = "a"\ntoken = "{TOKEN}"\nquota = 3\n',
        r" line 4: clients\[1\].quota: unknown key \(did you mean 'port_quota'\?\)",
    ),
    (
        f'token = "{TOKEN}"\n[[clients]]\nname = "a"\ntoken = "{TOKEN}"\n',
        r" line 2: clients: use either \[\[clients\]\] or token",
    ),
    ("start_port = \n", r" line 1: Invalid value \(column 14\)"),
    ("[limits\n", r" line 1: Expected ']' at the end of a table declaration \(column 8\)"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_RELAY)
def test_bad_relay_file_is_one_line_naming_the_place(
    tmp_path: pathlib.Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_relay(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(path), msg
    assert re.match(re.escape(path) + expected, msg), msg
    assert TOKEN not in msg  # never a secret in the message


BAD_EXPOSE = [
    ("[[tunnels]]\nremote_port = 1\n", r" line 1: tunnels\[1\]: a tunnel needs local"),
    ('[[tunnels]]\nlocal = ":0"\n', r" line 2: tunnels\[1\].local: the local port must not be 0"),
    (
        '[[tunnels]]\nlocal = ":1"\nname = "Web"\n',
        r" line 3: tunnels\[1\].name: 'Web' may hold only lowercase",
    ),
    ('local = ":1"\n[[tunnels]]\nlocal = ":2"\n', r" line 2: tunnels: use either"),
    ("tunnels = []\n", r" line 1: tunnels: 1 to 16 tunnels per expose"),
    ('[[tunnels]]\nlocal = ":1"\nremote = 5\n', r" line 3: tunnels\[1\].remote: unknown key"),
    ('reconnect = "no"\n', r" line 1: reconnect: must be true or false, not a string"),
    ("max_attempts = -1\n", r" line 1: max_attempts: must be between 0 and"),
    ("start_port = 1\n", r" line 1: start_port: unknown key"),  # a relay key
]


@pytest.mark.parametrize(("text", "expected"), BAD_EXPOSE)
def test_bad_expose_file_is_one_line_naming_the_place(
    tmp_path: pathlib.Path, text: str, expected: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_expose(path)
    assert "\n" not in str(ei.value)
    assert re.match(re.escape(path) + expected, str(ei.value)), str(ei.value)


def test_unreadable_huge_or_binary_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the config file .*nope.toml: No such"):
        load_relay(str(tmp_path / "nope.toml"))
    big = tmp_path / "big.toml"
    big.write_text("# x\n" * 300_000)
    with pytest.raises(ConfigError, match="larger than"):
        load_relay(str(big))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"a = 1\n\xff\xfe")
    with pytest.raises(ConfigError, match=r"bin.toml: not UTF-8 text \(byte 6\)"):
        load_expose(str(binary))


def test_cli_reports_a_bad_file_in_one_line_exit_1(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, 'start_port = "ten"\n')
    logger = logging.getLogger("trivpn")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:  # main() sets up logging for the process: put it back for the other tests
        assert main(["relay", "--config", path]) == 1
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    err = capsys.readouterr().err
    assert err == f"trivpn: error: {path} line 1: start_port: must be an integer, not a string\n"
    assert "Traceback" not in err


def test_routing_by_name_from_files(tmp_path: pathlib.Path) -> None:
    relay_file = _write(
        tmp_path,
        f'token = "{TOKEN}"\ndomain = "tunnels.example.net"\nhttp_addr = "127.0.0.1:0"\n',
        "relay.toml",
    )
    relay = build_relay(_args(["relay", "--config", relay_file]))
    assert relay.config.routing is not None
    assert relay.config.routing.domain == "tunnels.example.net"
    expose_file = _write(
        tmp_path,
        f'server = "r:9000"\ntoken = "{TOKEN}"\nlocal = ":3000"\nhttp = true\n'
        'subdomain = "api"\ninspect = "127.0.0.1:4040"\n',
        "expose.toml",
    )
    args = _args(["expose", "--config", expose_file])
    e = build_expose(args)
    assert (e.config.subdomain, e.config.routes) == ("api", 1) and args.inspect == "127.0.0.1:4040"
    two = _write(
        tmp_path,
        'subdomain = "api"\n[[tunnels]]\nlocal = ":1"\n[[tunnels]]\nlocal = ":2"\n',
        "two.toml",
    )
    with pytest.raises(ConfigError, match=r"two.toml line 1: subdomain: a named .* of its own"):
        load_expose(two)
