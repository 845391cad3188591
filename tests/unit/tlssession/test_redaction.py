"""Secrets never reach a log line or a repr: the pushed auth-token, key material, passwords."""

from __future__ import annotations

import logging

import pytest
from helpers.keyschedule_pair import BASE_PUSH, Pair, server_config

from trivpn.messages import TunnelUp
from trivpn.profile.model import Profile
from trivpn.profile.push import parse_push_options
from trivpn.redact import REDACTED, redact_control, redact_option
from trivpn.tlssession.tls import TLSConfig

TOKEN = "SESS_ID_AT_s3cretTok3nValue"


def test_redact_option_and_control_message() -> None:
    assert redact_option(f"auth-token {TOKEN}") == f"auth-token {REDACTED}"
    assert redact_option("auth-token-user YWxpY2U=") == f"auth-token-user {REDACTED}"
    assert redact_option("route 10.0.0.0 255.0.0.0") == "route 10.0.0.0 255.0.0.0"
    assert redact_option("auth-token") == "auth-token"  # nothing to hide
    msg = redact_control(f"PUSH_REPLY,ping 10,auth-token {TOKEN},ifconfig 10.8.0.2 255.255.255.0")
    assert TOKEN not in msg and "ping 10" in msg and "ifconfig 10.8.0.2" in msg


def test_pushed_settings_keep_the_token_but_never_show_it() -> None:
    s = parse_push_options([f"auth-token {TOKEN}", "ping 10"])
    assert s.auth_token == TOKEN
    assert TOKEN not in repr(s) and TOKEN not in " ".join(s.options)


def test_key_material_is_not_in_reprs() -> None:
    p = Profile(remotes=[], key="-----BEGIN PRIVATE KEY-----SECRETKEY", tls_crypt="TLSCRYPTKEY",
                auth_user_pass=("alice", "pw-secret"))
    text = repr(p)
    assert "SECRETKEY" not in text and "TLSCRYPTKEY" not in text and "pw-secret" not in text
    assert "SECRETKEY" not in repr(TLSConfig(ca_pem="x", cert_pem="c", key_pem="SECRETKEY"))


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO])
def test_a_pushed_auth_token_is_never_logged(caplog: pytest.LogCaptureFixture, level: int) -> None:
    caplog.set_level(level, logger="trivpn")
    p = Pair(server=server_config(push=(*BASE_PUSH, f"auth-token {TOKEN}")))
    p.connect()
    up = [e for e in p.client.events if isinstance(e, TunnelUp)][0]
    assert isinstance(up, TunnelUp) and up.settings.auth_token == TOKEN  # it did arrive
    assert "pushed settings" in caplog.text and "auth-token [redacted]" in caplog.text
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in repr(record.args)
