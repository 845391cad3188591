"""Digests and HMACs through the OpenSSL inside `cryptography`, not `hashlib`/`hmac`.

Why: importing the standard library's `hashlib` or `hmac` loads the system's libcrypto
(and `ssl` its libssl) next to the OpenSSL that `cryptography` links statically, which the
data channel needs anyway. A client needs only one of the two: with the client's hashing
here and trio's unused `ssl`/`hmac` imports deferred (`trivpn.lazystdlib`), `trivpn
connect` never maps the second one: 5.3 MB less peak RSS (docs/performance.md, "Start-up
and RSS"). The server and the offline tools may use `hashlib`; nothing breaks if they do.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

__all__ = ["HMAC", "algorithm", "digest", "hmac_digest", "hmac_key", "hmac_matches"]

_BY_NAME: dict[str, type[hashes.HashAlgorithm]] = {
    "md5": hashes.MD5,
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def algorithm(name: str) -> hashes.HashAlgorithm:
    """The hash called `name` as `hashlib` spells it ("sha256"); ValueError if unknown."""
    try:
        return _BY_NAME[name.lower()]()
    except KeyError:
        raise ValueError(f"unsupported digest {name!r}") from None


def digest(name: str, data: bytes) -> bytes:
    """`hashlib.new(name, data).digest()`."""
    h = hashes.Hash(algorithm(name))
    h.update(data)
    return h.finalize()


def hmac_key(key: bytes, name: str) -> HMAC:
    """A keyed HMAC to `copy()` per message (the key pads are derived once)."""
    return HMAC(key, algorithm(name))


def hmac_digest(key: bytes, msg: bytes, name: str) -> bytes:
    """`hmac.digest(key, msg, name)`."""
    mac = HMAC(key, algorithm(name))
    mac.update(msg)
    return mac.finalize()


def hmac_matches(mac: HMAC, tag: bytes) -> bool:
    """Does `mac` (fed, not finalized) end in `tag`? Compared in constant time by OpenSSL
    (`cryptography`'s own `constant_time` would import the standard library's `hmac`)."""
    try:
        mac.verify(bytes(tag))
    except InvalidSignature:
        return False
    return True
