"""Command-line behaviour that needs no network: one-line errors, credentials."""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
from pathlib import Path

import pytest

from trivpn import cli
from trivpn.errors import ConfigError
from trivpn.profile.profile import parse_profile

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trivpn", *argv], capture_output=True, text=True, timeout=60
    )


def test_wrong_flag_is_one_line_and_exit_2() -> None:
    r = run("ping", "x.ovpn", "10.0.0.1", "--bogus")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--bogus" in r.stderr


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("client\ndev tun\nremote a 1194\n", "ca"),
        ("client\ndev tun\nremote a 1194\nca /no/such/file.pem\n", "/no/such/file.pem"),
        ("client\ndev tap\nremote a\n", "tap"),
        ("client\ndev tun\nremote a\ncomp-lzo yes\n", "compression"),
    ],
)
def test_unusable_profile_is_one_line_and_exit_2_for_ping(tmp_path: Path, text: str, needle: str) -> None:
    profile = tmp_path / "p.ovpn"
    profile.write_text(text)
    r = run("ping", str(profile), "10.0.0.1")
    assert r.returncode == 2, r.stdout + r.stderr  # iputils: 2 is an error, 1 "no reply"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_missing_profile_file(tmp_path: Path) -> None:
    r = run("connect", str(tmp_path / "nope.ovpn"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1


def test_static_challenge_encoding() -> None:
    enc = cli.static_challenge_password("hunter2", "123456")
    tag, pw, resp = enc.split(":")
    assert tag == "SCRV1"
    assert base64.b64decode(pw) == b"hunter2" and base64.b64decode(resp) == b"123456"


def _args(**kw: str) -> argparse.Namespace:
    return argparse.Namespace(auth_user=kw.get("user", ""), auth_password=kw.get("password", ""))


def test_credentials_from_profile_and_static_challenge(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = parse_profile(
        f"client\ndev tun\nremote a\n<ca>\n{CA}</ca>\n"
        "<auth-user-pass>\nalice\ns3cret\n</auth-user-pass>\n"
        'static-challenge "Enter OTP:" 1\n'
    )
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "987654")
    user, password = cli._credentials(profile, _args())
    assert user == "alice"
    assert password == cli.static_challenge_password("s3cret", "987654")


def test_prompt_without_a_terminal_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = parse_profile(f"client\ndev tun\nremote a\n<ca>\n{CA}</ca>\nauth-user-pass\n")
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(ConfigError, match="no terminal"):
        cli._credentials(profile, _args())


def test_auth_user_takes_the_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = parse_profile(f"client\ndev tun\nremote a\n<ca>\n{CA}</ca>\nauth-user-pass\n")
    monkeypatch.setenv(cli.PASSWORD_ENV, "pw")
    assert cli._credentials(profile, _args(user="bob")) == ("bob", "pw")


def test_auth_user_without_password_source_and_no_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = parse_profile(f"client\ndev tun\nremote a\n<ca>\n{CA}</ca>\nauth-user-pass\n")
    monkeypatch.delenv(cli.PASSWORD_ENV, raising=False)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(ConfigError, match="TRIVPN_PASSWORD"):
        cli._credentials(profile, _args(user="bob"))


def test_password_on_the_command_line_is_refused(tmp_path: Path) -> None:
    r = run("connect", str(tmp_path / "x.ovpn"), "--auth-user", "bob", "--auth-password", "hunter2")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "--auth-password is gone" in r.stderr
    assert "TRIVPN_PASSWORD" in r.stderr
