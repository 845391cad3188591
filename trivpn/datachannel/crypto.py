"""Data-channel cipher names and key material (reference §4.2, §6.2).

The key-method-2 exchange (PRF or TLS-EKM) yields one 256-byte `key2` block made of two
128-byte halves, each `cipher slot (64) | hmac slot (64)`. The client (key direction
NORMAL) encrypts with half 0 and decrypts with half 1; the server (INVERSE) the other way
round. AEAD ciphers only use a prefix of the cipher slot as key, and the first 8 bytes of the
hmac slot as the implicit part of the 12-byte nonce (the packet id supplies the other 4).

Only AEAD ciphers are implemented. Anything else is refused here with a one-line
`ConfigError`, so a bad `cipher`/`data-ciphers` setting fails before a tunnel is attempted.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from trivpn.errors import ConfigError, LocalProtocolError

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
#: Short-form data packet id (`packet_id_type`).
PACKET_ID_LEN = 4
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


def normalize_cipher_name(name: str) -> str:
    """Return the canonical OpenVPN spelling of an AEAD cipher, or raise `ConfigError`.

    Matching is case-insensitive as in OpenVPN (which asks OpenSSL); the error names the
    cipher and says why it is refused.
    """
    upper = name.strip().upper()
    if upper in _KEY_LEN:
        return upper
    shown = name.strip() or repr(name)
    if upper == "NONE":
        raise ConfigError(f"cipher {shown} is refused: the data channel must be encrypted")
    if upper.startswith(_SMALL_BLOCK_PREFIXES):
        raise ConfigError(
            f"cipher {shown} is refused: 64-bit block ciphers are insecure (SWEET32); "
            f"use one of {', '.join(SUPPORTED_AEAD)}"
        )
    if upper.endswith("-CBC") or upper.endswith("-CFB") or upper.endswith("-OFB"):
        raise ConfigError(
            f"cipher {shown} is not supported (only AEAD data ciphers are implemented); "
            f"use one of {', '.join(SUPPORTED_AEAD)}"
        )
    raise ConfigError(
        f"unknown or unsupported data-channel cipher {shown}; "
        f"supported: {', '.join(SUPPORTED_AEAD)}"
    )


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
    "DirectionKeys",
    "cipher_key_len",
    "make_cipher",
    "normalize_cipher_name",
    "split_key2",
]
