"""Parsing every management command into its typed form, and the refusals' wording."""

from __future__ import annotations

import pytest

from trivpn.management import commands as c
from trivpn.management.lexer import split_line


def parse(line: str) -> c.Command:
    return c.parse_command(split_line(line))


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("help", c.Help()),
        ("version", c.Version()),
        ("version 3", c.Version(3)),
        ("pid", c.Pid()),
        ("load-stats", c.LoadStats()),
        ("quit", c.Quit()),
        ("exit", c.Quit()),
        ("state", c.State(None, 1)),
        ("state on", c.State(True, None)),
        ("state off", c.State(False, None)),
        ("state all", c.State(None, "all")),
        ("state 3", c.State(None, 3)),
        ("state on all", c.State(True, "all")),
        ("log on", c.Log(True, None)),
        ("log all", c.Log(None, "all")),
        ("log on 5", c.Log(True, 5)),
        ("echo on", c.Echo(True, None)),
        ("echo all", c.Echo(None, "all")),
        ("status", c.Status(None)),
        ("status 1", c.Status(1)),
        ("status 3", c.Status(3)),
        ("bytecount 5", c.ByteCount(5)),
        ("bytecount 0", c.ByteCount(0)),
        ("bytecount x", c.ByteCount(0)),  # observed: the daemon reads it with atoi
        ("bytecount 7s", c.ByteCount(7)),
        ("bytecount -1", c.ByteCount(0)),
        ("signal SIGHUP", c.Signal("SIGHUP")),
        ("signal SIGTERM", c.Signal("SIGTERM")),
        ("signal SIGUSR1", c.Signal("SIGUSR1")),
        ("signal SIGUSR2", c.Signal("SIGUSR2")),
        ("hold", c.Hold("query")),
        ("hold on", c.Hold("on")),
        ("hold off", c.Hold("off")),
        ("hold release", c.Hold("release")),
        ('username "Auth" "a b"', c.Username("Auth", "a b")),
        (r'password Auth "p\"q"', c.Password("Auth", 'p"q')),
        ("auth-retry", c.AuthRetry(None)),
        ("auth-retry interact", c.AuthRetry("interact")),
        ("auth-retry nointeract", c.AuthRetry("nointeract")),
        ("auth-retry none", c.AuthRetry("none")),
        ("kill client2", c.Kill(common_name="client2")),
        ("kill 10.99.2.2:45167", c.Kill(address=("10.99.2.2", 45167))),
        ("kill [fd00::2]:1194", c.Kill(address=("fd00::2", 1194))),
        ("kill host:name", c.Kill(common_name="host:name")),
        ("client-kill 4", c.ClientKill(4)),
        ("client-kill 4 HALT", c.ClientKill(4, "HALT")),
        ("client-auth 1 2", c.ClientAuth(1, 2)),
        ("client-auth-nt 1 2", c.ClientAuthNt(1, 2)),
        ('client-deny 1 2 "bad pw"', c.ClientDeny(1, 2, "bad pw")),
        ('client-deny 1 2 "x y" "z"', c.ClientDeny(1, 2, "x y", "z")),
    ],
)
def test_parse(line: str, command: c.Command) -> None:
    assert parse(line) == command


@pytest.mark.parametrize(
    ("line", "error"),
    [
        # wording observed on Debian's openvpn 2.6.14
        ("bogus", "unknown command, enter 'help' for more options"),
        ("HOLD", "unknown command, enter 'help' for more options"),
        ("signal SIGFOO", "signal 'SIGFOO' is not a known signal type"),
        ("signal", "the 'signal' command requires 1 parameter"),
        ("bytecount", "the 'bytecount' command requires 1 parameter"),
        ("log", "the 'log' command requires at least 1 parameter"),
        ("username", "the 'username' command requires 2 parameters"),
        ("hold bogus", "bad hold command parameter"),
        ("state bogus", "state parameter must be 'on' or 'off' or some number n or 'all'"),
        ("log bogus", "log parameter must be 'on' or 'off' or some number n or 'all'"),
        ("auth-retry bogus", "bad auth-retry parameter"),
        # ours
        ("status 9", "status version must be 1, 2 or 3"),
        ("client-kill x", "cannot parse CID"),  # observed
        ("client-auth 1", "the 'client-auth' command requires 2 parameters"),  # observed
        ("echo", "the 'echo' command requires at least 1 parameter"),  # observed
        ("client-auth x 1", "cannot parse CID"),
        ("client-auth 1 x", "cannot parse KID"),
        ("client-deny 1 2", "the 'client-deny' command requires 3 parameters"),
        ("client-kill 99999999999999999999", "cannot parse CID"),
    ],
)
def test_refusals(line: str, error: str) -> None:
    with pytest.raises(c.CommandError) as err:
        parse(line)
    assert str(err.value) == error


def test_password_value_is_not_in_repr() -> None:
    command = parse('password Auth "s3cret-value"')
    assert "s3cret-value" not in repr(command)
    assert "s3cret-value" not in str(command)
