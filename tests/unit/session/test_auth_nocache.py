"""auth-nocache: the password leaves memory once accepted and comes back only from its source."""

from __future__ import annotations

import pytest
import trio

from trivpn.client import Client
from trivpn.errors import FatalError
from trivpn.profile.profile import parse_profile
from trivpn.session.config import SessionConfig
from trivpn.testing.pki import generate_pki


def _config(nocache: bool, reauth: object = None) -> SessionConfig:
    pki = generate_pki()
    text = (
        f"client\ndev tun\nremote 127.0.0.1\n<ca>\n{pki.ca_cert}</ca>\n"
        "<auth-user-pass>\nalice\npw-secret\n</auth-user-pass>\n" + ("auth-nocache\n" if nocache else "")
    )
    profile = parse_profile(text)
    assert profile.auth_nocache is nocache
    return SessionConfig.from_profile(profile, username="alice", password="pw-secret", reauth=reauth)  # type: ignore[arg-type]  # tests pass None or a callable


def test_without_auth_nocache_the_password_stays() -> None:
    client = Client(_config(False))
    client._forget_password()
    assert client.config.password == "pw-secret"


def test_auth_nocache_forgets_after_success_and_asks_again_on_reconnect() -> None:
    asked: list[int] = []

    def reauth() -> str:
        asked.append(1)
        return "pw-again"

    cfg = _config(True, reauth)
    client = Client(cfg)
    client._forget_password()
    assert cfg.password == "" and client.config.password == ""  # in place: no copy keeps it
    assert client.profile.auth_user_pass is True
    trio.run(client._recall_password)
    assert asked == [1] and client.config.password == "pw-again"


def test_auth_nocache_with_an_auth_token_needs_no_password() -> None:
    client = Client(_config(True))
    client._forget_password()
    client._auth_token = "tok"
    trio.run(client._recall_password)  # the token authenticates; nothing is asked
    assert client.config.password == ""


def test_auth_nocache_without_a_source_is_fatal() -> None:
    client = Client(_config(True))
    client._forget_password()
    with pytest.raises(FatalError, match="auth-nocache"):
        trio.run(client._recall_password)
