"""`trivpn.digests` (cryptography's OpenSSL) gives what `hashlib`/`hmac` give."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivpn import digests

NAMES = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")


@given(st.sampled_from(NAMES), st.binary(max_size=300), st.binary(max_size=200))
def test_digest_and_hmac_match_the_standard_library(name: str, key: bytes, data: bytes) -> None:
    assert digests.digest(name, data) == hashlib.new(name, data).digest()
    assert digests.digest(name.upper(), data) == hashlib.new(name, data).digest()
    assert digests.hmac_digest(key, data, name) == hmac.digest(key, data, name)
    keyed = digests.hmac_key(key, name)
    mac = keyed.copy()
    mac.update(data)
    assert mac.finalize() == hmac.digest(key, data, name)
    assert digests.algorithm(name).digest_size == hashlib.new(name).digest_size


@given(st.binary(min_size=1, max_size=100), st.binary(max_size=100), st.integers(0, 19))
def test_hmac_matches_only_the_right_tag(key: bytes, data: bytes, flip: int) -> None:
    tag = hmac.digest(key, data, "sha1")
    for candidate, expected in ((tag, True), (tag[:flip] + bytes([tag[flip] ^ 1]) + tag[flip + 1:], False),
                                (tag[:-1], False), (b"", False)):
        mac = digests.hmac_key(key, "sha1")
        mac.update(data)
        assert digests.hmac_matches(mac, candidate) is expected


def test_unknown_digest_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unsupported digest 'whirlpool'"):
        digests.algorithm("whirlpool")
