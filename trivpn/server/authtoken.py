"""auth-gen-token: OpenVPN 2.6's session tokens, made and checked (pure: `now` is passed in).

Theory of operation
-------------------
After a client authenticated with its username and password, the server pushes
`auth-token SESS_ID_AT_<base64>`; the client then sends that token instead of its password
on renegotiation and on reconnect, and the server accepts it without asking the verify
script again (unless `external-auth`). The token carries everything needed to check it, so
no per-client state survives a disconnect:

    base64( session id (12 random bytes) | initial time (u64 BE) | time (u64 BE) | HMAC )

with HMAC-SHA256 over `username | session id | initial time | time` under the server's
secret (`auth-gen-token-secret`, a PEM "OpenVPN auth-token server key", else a random
key per process: tokens then die with the server). The HMAC key is the first 32 bytes of
the key block's HMAC half (bytes 64..95), as OpenVPN reads its `struct key`. A token made
for the empty username still authenticates (flag `empty_user`: the username cannot be
trusted). A token is *expired* when `now` is not in [time, time + 2 x renewal), when its
time is before its initial time, or when the lifetime since the initial time has passed.
Renewal keeps the session id and the initial time and moves the time to `now`.

The token is a credential: nothing here logs it, and `Token` keeps it out of repr.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import field

from trivpn.errors import ConfigError
from trivpn.records import dataclass

__all__ = [
    "PREFIX",
    "AuthTokenKey",
    "TokenCheck",
    "check_token",
    "is_auth_token",
    "make_token",
    "session_state",
]

PREFIX = "SESS_ID_AT_"
PEM_NAME = "OpenVPN auth-token server key"
SESSION_ID_LEN = 12
_HMAC_LEN = 32
_DATA_LEN = SESSION_ID_LEN + 8 + 8 + _HMAC_LEN  # 60: a multiple of 3, so no base64 padding
TOKEN_LEN = len(PREFIX) + _DATA_LEN * 4 // 3
#: OpenVPN's `struct key`: 64 cipher bytes, then 64 HMAC bytes.
_KEY_BLOCK = 128


@dataclass(frozen=True, slots=True)
class AuthTokenKey:
    """The HMAC-SHA256 key tokens are signed with (kept out of repr)."""

    hmac_key: bytes = field(repr=False)

    @classmethod
    def from_pem(cls, text: str) -> AuthTokenKey:
        """The key from `openvpn --genkey auth-token FILE` (ConfigError when it is not one)."""
        begin, end = f"-----BEGIN {PEM_NAME}-----", f"-----END {PEM_NAME}-----"
        start = text.find(begin)
        stop = text.find(end, start + 1)
        if start < 0 or stop < 0:
            raise ConfigError(f"no '{PEM_NAME}' found")
        try:
            raw = base64.b64decode("".join(text[start + len(begin) : stop].split()), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the auth-token secret is not valid base64") from None
        if len(raw) < _KEY_BLOCK:
            raise ConfigError(f"the auth-token secret has {len(raw)} bytes, needs {_KEY_BLOCK}")
        return cls(raw[64:96])

    @classmethod
    def generate(cls) -> AuthTokenKey:
        """A random key for this process (no auth-gen-token-secret)."""
        return cls(os.urandom(32))


def is_auth_token(password: str) -> bool:
    """True when `password` has the shape of a token (then it is checked, never a script's)."""
    return len(password) == TOKEN_LEN and hmac.compare_digest(password[: len(PREFIX)], PREFIX)


def _mac(key: AuthTokenKey, username: str, body: bytes) -> bytes:
    return hmac.new(key.hmac_key, username.encode("utf-8", "replace") + body, hashlib.sha256).digest()


def make_token(
    key: AuthTokenKey, username: str, now: int, *, renew: str | None = None, session_id: bytes | None = None
) -> str:
    """A token for `username` at `now`. `renew` (a previously accepted token) keeps its
    session id and initial time; else `session_id` (tests) or 12 random bytes start one."""
    initial = now
    if renew is not None:
        data = _decode(renew)
        if data is None:
            raise ValueError("not an auth-token")
        session_id = data[:SESSION_ID_LEN]
        (initial,) = struct.unpack(">Q", data[SESSION_ID_LEN : SESSION_ID_LEN + 8])
    sid = session_id if session_id is not None else os.urandom(SESSION_ID_LEN)
    if len(sid) != SESSION_ID_LEN:
        raise ValueError("an auth-token session id has 12 bytes")
    body = sid + struct.pack(">QQ", initial, now)
    return PREFIX + base64.b64encode(body + _mac(key, username, body)).decode("ascii")


def _decode(token: str) -> bytes | None:
    if not is_auth_token(token):
        return None
    try:
        data = base64.b64decode(token[len(PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if len(data) == _DATA_LEN else None


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """What a presented token proved. `ok` is the only state accepted without a script."""

    hmac_ok: bool
    expired: bool = False
    empty_user: bool = False
    session_id: str = ""  # the base64 session id (the external-auth script's `session_id`)

    @property
    def ok(self) -> bool:
        return self.hmac_ok and not self.expired and not self.empty_user


def check_token(
    key: AuthTokenKey, token: str, username: str, now: int, *, renewal: int, lifetime: int
) -> TokenCheck:
    """Check `token` presented by `username` at `now` (see the module docstring)."""
    data = _decode(token)
    if data is None:
        return TokenCheck(False)
    body, mac = data[:-_HMAC_LEN], data[-_HMAC_LEN:]
    empty = False
    if not hmac.compare_digest(_mac(key, username, body), mac):
        if not hmac.compare_digest(_mac(key, "", body), mac):
            return TokenCheck(False)
        empty = True
    initial, stamp = struct.unpack(">QQ", body[SESSION_ID_LEN:])
    expired = not stamp <= now < stamp + 2 * renewal or stamp < initial
    if lifetime and now > initial + lifetime:
        expired = True
    sid = token[len(PREFIX) : len(PREFIX) + SESSION_ID_LEN * 4 // 3]
    return TokenCheck(True, expired, empty, sid)


def session_state(password: str, check: TokenCheck | None) -> str:
    """The external-auth script's `session_state` variable."""
    if check is None or not is_auth_token(password):
        return "Initial"
    if not check.hmac_ok:
        return "Invalid"
    state = "Expired" if check.expired else "Authenticated"
    return state + ("EmptyUser" if check.empty_user else "")
