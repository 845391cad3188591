"""The management line lexer against the parameter splits Debian's openvpn 2.6.14 made."""

from __future__ import annotations

import pytest

from trivpn.management.lexer import MAX_PARAMS, LexError, split_line


@pytest.mark.parametrize(
    ("line", "params"),
    [
        ("pid", ["pid"]),
        ("hold  on   ", ["hold", "on"]),
        ("\tstate\ton all", ["state", "on", "all"]),
        ('username "Auth" "a b"', ["username", "Auth", "a b"]),
        (r'password Auth "x\"y"', ["password", "Auth", 'x"y']),
        (r'username Auth "a b\\c"', ["username", "Auth", r"a b\c"]),
        (r"username 'Auth' 'a\b'", ["username", "Auth", r"a\b"]),  # no escapes in '…'
        (r"username Auth a\ b", ["username", "Auth", "a b"]),
        ('password Auth ""', ["password", "Auth", ""]),
        ("#x", []),
        ("; comment", []),
        ("", []),
        ("pid #x", ["pid", "#x"]),  # the binary answered this `pid` normally
        ("pid;x", ["pid;x"]),  # and this one as an unknown command
    ],
)
def test_split(line: str, params: list[str]) -> None:
    assert split_line(line) == params


def test_parameters_beyond_the_sixteenth_are_ignored() -> None:
    words = [f"w{i}" for i in range(20)]
    assert split_line(" ".join(words)) == words[:MAX_PARAMS]


# observed: `username Auth "unterminated` →
# b'ERROR: Options error: No closing quotation (") in TCP:0\r\n'
def test_unterminated_double_quote() -> None:
    with pytest.raises(LexError) as err:
        split_line('username Auth "unterminated')
    assert str(err.value) == 'Options error: No closing quotation (") in TCP:0'


def test_unterminated_single_quote_and_trailing_backslash() -> None:
    with pytest.raises(LexError, match="single quotation"):
        split_line("username 'Auth")
    with pytest.raises(LexError, match="Residual"):
        split_line("username Auth x\\")


# observed: a 300-character word → b'ERROR: Options error: Parameter at TCP:0 is too long
# (256 chars max): ' followed by the first 255 characters
def test_parameter_too_long() -> None:
    with pytest.raises(LexError) as err:
        split_line("x" * 300)
    assert str(err.value) == (
        "Options error: Parameter at TCP:0 is too long (256 chars max): " + "x" * 255
    )
    assert split_line("x" * 255) == ["x" * 255]
