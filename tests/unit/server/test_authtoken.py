"""auth-gen-token tokens: OpenVPN 2.6's format (checked against the known-answer tokens of
OpenVPN's own auth-token unit test), validity windows, and the password check around them."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import server_config

from trivpn.errors import ConfigError
from trivpn.messages import AuthRequest
from trivpn.server.admission import ServerScripts, check_credentials
from trivpn.server.authtoken import (
    AuthTokenKey,
    check_token,
    is_auth_token,
    make_token,
    session_state,
)
from trivpn.tlssession.serverrole import with_auth_token

USER = "test user name"
#: all-zero key, session id "0123456789abcdef" (base64), both times 0
ZERO_KEY_TOKEN = "SESS_ID_AT_0123456789abcdefAAAAAAAAAAAAAAAAAAAAAE5JsQJOVfo8jnI3RL3tBaR5NkE4yPfcylFUHmHSc5Bu"
RANDOM_KEY = """-----BEGIN OpenVPN auth-token server key-----
+mmmf7IQ5cymtMVjKYTWk8IOcYanRlpQmV9Tb3EjkHYxueBVDg3yqRgzeBlVGzNLD//rAPiOVhau
3NDBjNOQB8951bfs7Cc2mYfay92Bh2gRJ5XEM/DMfzCWN+7uU6NWoTTHr4FuojnIQtjtqVAj/JS9
w+dTSp/vYHl+c7uHd19uVRu/qLqV85+rm4tUGIjO7FfYuwyPqwmhuIsi3hs9QkSimh888FmBpoKY
/tbKVTJZmSERKti9KEwtV2eVAR0znN5KW7lCB3mHVAhN7bUpcoDjfCzYIFARxwswTFu9gFkwqUMY
I1KUOgIsVNs4llACioeXplYekWETR+YkJwDc/A==
-----END OpenVPN auth-token server key-----
"""
RANDOM_KEY_TOKEN = "SESS_ID_AT_ThhRItzOKNKrh3dfAAAAAFwzHpwAAAAAXDMenDdrq0RoH3dkA1f7O3wO+7kZcx2DusVZrRmFlWQM9HOb"


def test_known_answers() -> None:
    zero = AuthTokenKey(bytes(32))
    assert make_token(zero, USER, 0, session_id=base64.b64decode("0123456789abcdef")) == ZERO_KEY_TOKEN
    key = AuthTokenKey.from_pem(RANDOM_KEY)
    assert make_token(key, USER, 0x5C331E9C, renew=RANDOM_KEY_TOKEN) == RANDOM_KEY_TOKEN
    assert check_token(key, RANDOM_KEY_TOKEN, USER, 0x5C331E9C, renewal=120, lifetime=0).ok


def test_validity_window_lifetime_and_renewal() -> None:
    key = AuthTokenKey.generate()
    token = make_token(key, USER, 100_000)
    assert is_auth_token(token) and not is_auth_token("SESS_ID_AT_short")

    def check(now: int, lifetime: int = 3000, tok: str = token) -> tuple[bool, bool]:
        c = check_token(key, tok, USER, now, renewal=120, lifetime=lifetime)
        return c.hmac_ok, c.expired

    assert check(100_000) == (True, False)
    assert check(100_000 - 100) == (True, True)  # from the future
    assert check(100_000 + 239) == (True, False) and check(100_000 + 240) == (True, True)
    renewed = make_token(key, USER, 100_200, renew=token)
    assert renewed[:27] == token[:27]  # same session id
    assert check(100_300, tok=renewed) == (True, False)
    assert check(103_001, tok=make_token(key, USER, 102_990, renew=token)) == (True, True)  # lifetime
    assert check(103_001, lifetime=0, tok=make_token(key, USER, 102_990, renew=token)) == (True, False)
    assert check_token(AuthTokenKey.generate(), token, USER, 100_000, renewal=120, lifetime=0).hmac_ok is False
    assert check_token(key, token, "someone else", 100_000, renewal=120, lifetime=0).hmac_ok is False


def test_empty_user_tokens_and_session_states() -> None:
    key = AuthTokenKey.generate()
    token = make_token(key, "", 0)
    c = check_token(key, token, "mallory", 0, renewal=60, lifetime=0)
    assert c.hmac_ok and c.empty_user and not c.ok
    assert session_state(token, c) == "AuthenticatedEmptyUser"
    assert session_state("password", None) == "Initial"
    bad = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert session_state(bad, check_token(key, bad, "", 0, renewal=60, lifetime=0)) == "Invalid"
    assert session_state(token, check_token(key, token, "", 500, renewal=60, lifetime=0)) == "Expired"


def test_secret_file_errors_and_repr() -> None:
    with pytest.raises(ConfigError, match="auth-token server key"):
        AuthTokenKey.from_pem("nothing")
    short = "-----BEGIN OpenVPN auth-token server key-----\nAAAA\n-----END OpenVPN auth-token server key-----\n"
    with pytest.raises(ConfigError, match="bytes"):
        AuthTokenKey.from_pem(short)
    assert "hmac_key" not in repr(AuthTokenKey.generate())


def test_auth_token_follows_peer_id_in_the_push_reply() -> None:
    opts = ["route-gateway 10.8.0.1", "ifconfig 10.8.0.2 255.255.255.0", "peer-id 3", "cipher AES-256-GCM"]
    assert with_auth_token(opts, "T")[3] == "auth-token T"
    assert with_auth_token(opts[:2] + opts[3:], "T")[2] == "auth-token T"
    assert with_auth_token(opts, None) == opts


def _scripts(tmp_path: Path, extra: str) -> tuple[ServerScripts, Path]:
    calls = tmp_path / "calls"
    script = tmp_path / "verify.sh"
    script.write_text(f"#!/bin/sh\necho \"$session_state\" >> {calls}\nexit 0\n")
    script.chmod(0o700)
    cfg = server_config(shared_pki(), f"script-security 2\nauth-user-pass-verify {script} via-file\n{extra}")
    return ServerScripts(cfg), calls


def test_check_credentials_token_paths(tmp_path: Path) -> None:
    scripts, calls = _scripts(tmp_path, "auth-gen-token 0 60")
    addr = ("192.0.2.1", 1194)

    async def run(password: str) -> tuple[str | None, str | None, str]:
        creds = await check_credentials(scripts, AuthRequest("alice", "", password), addr, {}, 5.0)
        return creds.why, creds.token, creds.reason

    why, token, _ = trio.run(run, "pw")
    assert why is None and token is not None
    assert calls.read_text().split() == ["Initial"]
    assert trio.run(run, token)[0] is None  # accepted without the script
    assert calls.read_text().split() == ["Initial"]
    key = scripts.token_key
    assert key is not None
    stale = make_token(key, "alice", 1000)
    assert trio.run(run, stale)[::2] == ("the auth-token expired", "SESSION: token expired")
    forged = make_token(AuthTokenKey.generate(), "alice", 1000)
    assert trio.run(run, forged)[0] == "the auth-token is not valid"
    assert calls.read_text().split() == ["Initial"]


def test_external_auth_asks_the_script_with_the_session_state(tmp_path: Path) -> None:
    scripts, calls = _scripts(tmp_path, "auth-gen-token 0 60 external-auth")
    assert scripts.config.auth_gen_token is not None and scripts.config.auth_gen_token.external_auth

    async def run(password: str) -> str | None:
        return (await check_credentials(scripts, AuthRequest("alice", "", password), ("::1", 1), {}, 5.0)).token

    token = trio.run(run, "pw")
    assert token is not None and trio.run(run, token) is not None
    assert calls.read_text().split() == ["Initial", "Authenticated"]


def test_config_options(tmp_path: Path) -> None:
    pki = shared_pki()
    base = "script-security 2\nauth-user-pass-verify /bin/true via-file\n"
    cfg = server_config(pki, base + "auth-gen-token\nreneg-sec 900")
    assert cfg.auth_gen_token is not None and cfg.auth_gen_token.renewal == 900
    cfg = server_config(pki, base + f"auth-gen-token 3600 30\n<auth-gen-token-secret>\n{RANDOM_KEY}</auth-gen-token-secret>")
    assert dataclasses.astuple(cfg.auth_gen_token)[:3] == (3600, 30, False)  # type: ignore[arg-type]
    assert "BEGIN" not in repr(cfg.auth_gen_token)  # the secret stays out of logs
    with pytest.raises(ConfigError, match="auth-gen-token"):
        server_config(pki, base + "auth-gen-token 10 x")
    with pytest.raises(ConfigError, match="auth-gen-token-secret"):
        server_config(pki, base + "auth-gen-token\n<auth-gen-token-secret>\nnope\n</auth-gen-token-secret>")
    alone = server_config(pki, "auth-gen-token")
    assert alone.auth_gen_token is None and any("no effect" in w for w in alone.warnings)
