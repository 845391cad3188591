"""Data-channel cipher names and key material (reference §4.2, §6.2).

The key-method-2 exchange (PRF or TLS-EKM) yields one 256-byte `key2` block made of two
128-byte halves, each `cipher slot (64) | hmac slot (64)`. The client (key direction
NORMAL) encrypts with half 0 and decrypts with half 1; the server (INVERSE) the other way
round. AEAD ciphers only use a prefix of the cipher slot as key, and the first 8 bytes of the
hmac slot as the implicit part of the 12-byte nonce (the packet id supplies the other 4).

`normalize_cipher_name` accepts AEAD ciphers only (the modern data channel);
`normalize_data_cipher` also accepts the legacy AES-CBC ciphers, which need an HMAC digest
(`normalize_auth_name`) and live in `trivpn.datachannel.cbc`. Anything else is refused here
with a one-line `ConfigError`, so a bad `cipher`/`data-ciphers`/`auth` setting fails before a
tunnel is attempted.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from trivpn.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.wire import PACKET_ID_LEN

#: AEAD ciphers we speak, in OpenVPN 2.6's default `data-ciphers` preference order first.
SUPPORTED_AEAD = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305", "AES-192-GCM")

#: Size of `struct key2` (two directions of `struct key`).
KEY2_LEN = 256
#: `MAX_CIPHER_KEY_LENGTH`: size of the cipher slot of one direction.
MAX_CIPHER_KEY_LENGTH = 64
#: `MAX_HMAC_KEY_LENGTH`: size of the hmac slot of one direction.
MAX_HMAC_KEY_LENGTH = 64
#: `OPENVPN_AEAD_TAG_LENGTH`.
OPENVPN_AEAD_TAG_LENGTH = 16
#: AEAD nonce length; the first `PACKET_ID_LEN` bytes are the packet id.
AEAD_IV_LEN = 12
#: Implicit IV taken from the hmac slot: `iv_len - sizeof(packet_id_type)`.
IMPLICIT_IV_LEN = AEAD_IV_LEN - PACKET_ID_LEN

_KEY_LEN = {
    "AES-128-GCM": 16,
    "AES-192-GCM": 24,
    "AES-256-GCM": 32,
    "CHACHA20-POLY1305": 32,
}

# Prefixes of OpenSSL names of 64-bit block ciphers (SWEET32); OpenVPN 2.6 also warns on them.
_SMALL_BLOCK_PREFIXES = ("BF", "BLOWFISH", "DES", "CAST", "RC2", "IDEA")

AEAD = AESGCM | ChaCha20Poly1305


class DataAuthError(RemoteProtocolError):
    """A data packet's tag (AEAD) or HMAC (CBC) does not match: forged, corrupted, or sealed
    with another key. Counted apart from malformed packets, so it has a type of its own."""


#: Legacy CBC ciphers (with an HMAC from `auth`), strongest first.
SUPPORTED_CBC = ("AES-256-CBC", "AES-192-CBC", "AES-128-CBC")
#: Every data-channel cipher we speak, AEAD first.
SUPPORTED_DATA_CIPHERS = SUPPORTED_AEAD + SUPPORTED_CBC
_CBC_KEY_LEN = {"AES-128-CBC": 16, "AES-192-CBC": 24, "AES-256-CBC": 32}

#: `auth` digests for the CBC HMAC: canonical OpenVPN/OpenSSL name -> (hashlib name, size).
SUPPORTED_AUTH: dict[str, tuple[str, int]] = {
    "SHA1": ("sha1", 20),
    "SHA224": ("sha224", 28),
    "SHA256": ("sha256", 32),
    "SHA384": ("sha384", 48),
    "SHA512": ("sha512", 64),
}
# OpenSSL 3 spellings that name the same digests.
_AUTH_ALIASES = {
    "SHA-1": "SHA1",
    "SHA2-224": "SHA224",
    "SHA-224": "SHA224",
    "SHA2-256": "SHA256",
    "SHA-256": "SHA256",
    "SHA2-384": "SHA384",
    "SHA-384": "SHA384",
    "SHA2-512": "SHA512",
    "SHA-512": "SHA512",
}


def _refuse(name: str, supported: tuple[str, ...]) -> ConfigError:
    """The one-line reason a data cipher is refused, naming what would work instead."""
    upper = name.strip().upper()
    shown = name.strip() or repr(name)
    choices = ", ".join(supported)
    if upper == "NONE":
        return ConfigError(f"cipher {shown} is refused: the data channel must be encrypted")
    if upper.startswith(_SMALL_BLOCK_PREFIXES):
        return ConfigError(
            f"cipher {shown} is refused: it has a 64-bit block, so blocks start to collide "
            f"after a few GB under one key and plaintext leaks (SWEET32, CVE-2016-6329); "
            f"ask the server to offer one of {choices}"
        )
    if upper.endswith(("-CBC", "-CFB", "-CFB1", "-CFB8", "-OFB", "-CTR")):
        return ConfigError(f"cipher {shown} is not supported; use one of {choices}")
    return ConfigError(
        f"unknown or unsupported data-channel cipher {shown}; supported: {choices}"
    )


def normalize_cipher_name(name: str) -> str:
    """Return the canonical OpenVPN spelling of an AEAD cipher, or raise `ConfigError`.

    Matching is case-insensitive as in OpenVPN (which asks OpenSSL); the error names the
    cipher and says why it is refused. CBC ciphers are refused here: see
    `normalize_data_cipher`.
    """
    upper = name.strip().upper()
    if upper in _KEY_LEN:
        return upper
    raise _refuse(name, SUPPORTED_AEAD)


def is_cbc(cipher: str) -> bool:
    """True for a legacy CBC cipher we implement (any spelling)."""
    return cipher.strip().upper() in _CBC_KEY_LEN


def normalize_data_cipher(name: str) -> str:
    """Canonical name of any data cipher we speak (AEAD or AES-CBC), or `ConfigError`.

    Why a second function: `normalize_cipher_name` stays AEAD-only for code that can only
    run AEAD; cipher negotiation and the data channel use this one.
    """
    upper = name.strip().upper()
    if upper in _KEY_LEN or upper in _CBC_KEY_LEN:
        return upper
    raise _refuse(name, SUPPORTED_DATA_CIPHERS)


def cbc_key_len(cipher: str) -> int:
    """AES key length in bytes of a CBC cipher name (raises `ConfigError` for others)."""
    name = normalize_data_cipher(cipher)
    if name not in _CBC_KEY_LEN:
        raise ConfigError(f"cipher {name} is not a CBC cipher")
    return _CBC_KEY_LEN[name]


def normalize_auth_name(name: str) -> str:
    """Canonical `auth` digest name for the CBC HMAC, or a one-line `ConfigError`."""
    upper = name.strip().upper()
    upper = _AUTH_ALIASES.get(upper, upper)
    if upper in SUPPORTED_AUTH:
        return upper
    shown = name.strip() or repr(name)
    if upper == "NONE":
        raise ConfigError(
            "auth none is refused: CBC packets without an HMAC can be forged and decrypted "
            "by padding-oracle attacks"
        )
    if upper in ("MD5", "MD4", "RIPEMD160", "MDC2"):
        raise ConfigError(
            f"auth {shown} is refused: it is a weak or obsolete digest; "
            f"use one of {', '.join(SUPPORTED_AUTH)}"
        )
    raise ConfigError(
        f"unknown or unsupported auth digest {shown}; supported: {', '.join(SUPPORTED_AUTH)}"
    )


def auth_digest_size(auth: str) -> int:
    """HMAC output (and key) length in bytes of an `auth` digest."""
    return SUPPORTED_AUTH[normalize_auth_name(auth)][1]


def cipher_key_len(cipher: str) -> int:
    """Key length in bytes of a (normalizable) cipher name."""
    return _KEY_LEN[normalize_cipher_name(cipher)]


@dataclass(frozen=True, slots=True)
class DirectionKeys:
    """The key material of one direction of an AEAD data channel."""

    cipher_key: bytes
    implicit_iv: bytes  # 8 bytes (first 8 of the hmac slot)


def split_key2(key2: bytes, cipher: str, *, is_server: bool) -> tuple[DirectionKeys, DirectionKeys]:
    """Slice `key2` into (encrypt, decrypt) keys for our side of the connection."""
    if len(key2) != KEY2_LEN:
        raise LocalProtocolError(f"key2 must be {KEY2_LEN} bytes, got {len(key2)}")
    key_len = cipher_key_len(cipher)
    key2 = bytes(key2)

    def half(index: int) -> DirectionKeys:
        base = index * (MAX_CIPHER_KEY_LENGTH + MAX_HMAC_KEY_LENGTH)
        hmac_slot = base + MAX_CIPHER_KEY_LENGTH
        return DirectionKeys(
            cipher_key=key2[base : base + key_len],
            implicit_iv=key2[hmac_slot : hmac_slot + IMPLICIT_IV_LEN],
        )

    # NORMAL (client) sends with keys[0]; INVERSE (server) sends with keys[1].
    if is_server:
        return half(1), half(0)
    return half(0), half(1)


def make_cipher(cipher: str, key: bytes) -> AEAD:
    """Build the reusable AEAD object for one direction (raises `ConfigError` if unsupported)."""
    name = normalize_cipher_name(cipher)
    if len(key) != _KEY_LEN[name]:
        raise LocalProtocolError(f"{name} needs a {_KEY_LEN[name]}-byte key, got {len(key)}")
    if name == "CHACHA20-POLY1305":
        return ChaCha20Poly1305(key)
    return AESGCM(key)


__all__ = [
    "AEAD",
    "AEAD_IV_LEN",
    "IMPLICIT_IV_LEN",
    "KEY2_LEN",
    "OPENVPN_AEAD_TAG_LENGTH",
    "PACKET_ID_LEN",
    "SUPPORTED_AEAD",
    "SUPPORTED_AUTH",
    "SUPPORTED_CBC",
    "SUPPORTED_DATA_CIPHERS",
    "DataAuthError",
    "DirectionKeys",
    "auth_digest_size",
    "cbc_key_len",
    "cipher_key_len",
    "is_cbc",
    "make_cipher",
    "normalize_auth_name",
    "normalize_cipher_name",
    "normalize_data_cipher",
    "split_key2",
]
