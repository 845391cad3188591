"""tls-crypt-v2, the server side: open the wrapped client keys (WKc) clients send.

Theory of operation
-------------------
The server holds one key (Ke for AES-256-CTR, Ka for HMAC-SHA256) and no per-client state:
every client key Kc travels inside the client's first packets, sealed by the server key::

    WKc = T (32) | AES-256-CTR(Ke, IV = T[:16], Kc (256) | metadata) | len (uint16 BE)
    T   = HMAC-SHA256(Ka, len | Kc | metadata),  len = the whole WKc's length

A client's P_CONTROL_HARD_RESET_CLIENT_V3 / P_CONTROL_WKC_V1 is an ordinary tls-crypt packet
(keyed by Kc, the server using it NORMAL) with the WKc appended in the clear; its last two
bytes say how long it is. Everything here is pure: no clock, no I/O, nothing remembered.
"""

from __future__ import annotations

import struct
from dataclasses import field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trivpn import digests
from trivpn.controlchannel.wrap import (
    KEY_SLOT_LEN,
    STATIC_KEY_LEN,
    TLS_CRYPT_KEY_LEN,
    TLS_CRYPT_OFF_CT,
    TLS_CRYPT_TAG_SIZE,
    TLS_CRYPT_V2_CLIENT_BEGIN,
    TLS_CRYPT_V2_MAX_WKC_LEN,
    StaticKey,
    TLSCrypt,
    armored_body,
)
from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.wire import PACKET_ID_LONG_LEN

__all__ = [
    "ClientKeyV2",
    "TLSCryptV2Server",
    "TLSCryptV2ServerKey",
    "split_wkc",
    "unwrap_client_key",
    "wrap_client_key",
]

TLS_CRYPT_V2_SERVER_BEGIN = "-----BEGIN OpenVPN tls-crypt-v2 server key-----"
TLS_CRYPT_V2_SERVER_END = "-----END OpenVPN tls-crypt-v2 server key-----"
#: `struct key`: a 64-byte cipher slot and a 64-byte hmac slot.
TLS_CRYPT_V2_SERVER_KEY_LEN = 2 * KEY_SLOT_LEN
#: The smallest WKc: tag, Kc and the length field (no metadata).
TLS_CRYPT_V2_MIN_WKC_LEN = TLS_CRYPT_TAG_SIZE + STATIC_KEY_LEN + 2
#: Metadata types (first metadata byte).
TLS_CRYPT_V2_METADATA_USER = 0x00
TLS_CRYPT_V2_METADATA_TIMESTAMP = 0x01

_LEN16 = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class TLSCryptV2ServerKey:
    """The server's tls-crypt-v2 key: seals (`wrap_client_key`) and opens client keys."""

    data: bytes = field(repr=False)  # secret

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes | bytearray) or len(self.data) != TLS_CRYPT_V2_SERVER_KEY_LEN:
            raise ConfigError(f"tls-crypt-v2 server key must be {TLS_CRYPT_V2_SERVER_KEY_LEN} bytes")
        object.__setattr__(self, "data", bytes(self.data))

    @classmethod
    def from_text(cls, text: str) -> TLSCryptV2ServerKey:
        import base64
        import binascii

        if TLS_CRYPT_V2_SERVER_BEGIN not in text and TLS_CRYPT_V2_CLIENT_BEGIN in text:
            raise ConfigError("tls-crypt-v2: this is a client key; a server needs the server key")
        body = armored_body(text, TLS_CRYPT_V2_SERVER_BEGIN, TLS_CRYPT_V2_SERVER_END, "tls-crypt-v2")
        try:
            raw = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("tls-crypt-v2: the server key is not valid base64") from None
        if len(raw) != TLS_CRYPT_V2_SERVER_KEY_LEN:
            raise ConfigError(f"tls-crypt-v2: server key of {len(raw)} bytes, not {TLS_CRYPT_V2_SERVER_KEY_LEN}")
        return cls(raw)

    @property
    def ke(self) -> bytes:
        return self.data[:TLS_CRYPT_KEY_LEN]

    @property
    def ka(self) -> bytes:
        return self.data[KEY_SLOT_LEN : KEY_SLOT_LEN + TLS_CRYPT_KEY_LEN]


@dataclass(frozen=True, slots=True)
class ClientKeyV2:
    """What a WKc held: the client's tls-crypt key Kc and the metadata the key maker set."""

    key: StaticKey = field(repr=False)
    metadata: bytes


def wrap_client_key(server: TLSCryptV2ServerKey, kc: StaticKey, metadata: bytes = b"") -> bytes:
    """Seal `kc` (and metadata) for a client, as `--genkey tls-crypt-v2-client` does."""
    plain = kc.data + bytes(metadata)
    total = TLS_CRYPT_TAG_SIZE + len(plain) + 2
    if total > TLS_CRYPT_V2_MAX_WKC_LEN:
        raise ConfigError(f"tls-crypt-v2: metadata too long ({len(metadata)} bytes)")
    net_len = _LEN16.pack(total)
    tag = digests.hmac_digest(server.ka, net_len + plain, "sha256")
    enc = Cipher(algorithms.AES(server.ke), modes.CTR(tag[:16])).encryptor()
    return tag + enc.update(plain) + enc.finalize() + net_len


def unwrap_client_key(server: TLSCryptV2ServerKey, wkc: bytes) -> ClientKeyV2:
    """Open a WKc: RemoteProtocolError when it is short, long, mis-sized or not authentic.

    Pure and constant-time in the tag comparison; nothing is kept."""
    n = len(wkc)
    if not TLS_CRYPT_V2_MIN_WKC_LEN <= n <= TLS_CRYPT_V2_MAX_WKC_LEN:
        raise RemoteProtocolError(f"tls-crypt-v2: wrapped client key of {n} bytes")
    net_len = wkc[-2:]
    if _LEN16.unpack(net_len)[0] != n:
        raise RemoteProtocolError("tls-crypt-v2: wrapped client key length mismatch")
    tag = wkc[:TLS_CRYPT_TAG_SIZE]
    dec = Cipher(algorithms.AES(server.ke), modes.CTR(tag[:16])).decryptor()
    plain = dec.update(wkc[TLS_CRYPT_TAG_SIZE:-2]) + dec.finalize()
    mac = digests.hmac_key(server.ka, "sha256")
    mac.update(net_len + plain)
    if not digests.hmac_matches(mac, tag):
        raise RemoteProtocolError("tls-crypt-v2: wrapped client key not authentic")
    return ClientKeyV2(StaticKey(plain[:STATIC_KEY_LEN]), plain[STATIC_KEY_LEN:])


def split_wkc(data: bytes) -> tuple[bytes, bytes]:
    """(wrapped packet, WKc) of a RESET_V3 / WKC_V1 datagram, by the WKc's trailing length."""
    if len(data) < 2:
        raise RemoteProtocolError("tls-crypt-v2: packet too short for a wrapped client key")
    n = _LEN16.unpack(data[-2:])[0]
    if not TLS_CRYPT_V2_MIN_WKC_LEN <= n <= TLS_CRYPT_V2_MAX_WKC_LEN or n + TLS_CRYPT_OFF_CT > len(data):
        raise RemoteProtocolError("tls-crypt-v2: bad wrapped client key length")
    return data[:-n], data[-n:]


class TLSCryptV2Server:
    """The server's tls-crypt-v2 context: opens WKcs and keys per-client wraps.

    `timestamp` is the unix time the wraps put in their replay ids (passed in once)."""

    __slots__ = ("_key", "_timestamp")

    def __init__(self, key: TLSCryptV2ServerKey, *, timestamp: int) -> None:
        self._key = key
        self._timestamp = timestamp

    def open(self, wkc: bytes) -> ClientKeyV2:
        return unwrap_client_key(self._key, wkc)

    def wrap_for(self, kc: StaticKey, initial_packet_id: int = 1) -> TLSCrypt:
        """A server-direction tls-crypt wrap with the client's key (fresh replay state)."""
        return TLSCrypt(kc, server=True, timestamp=self._timestamp, initial_packet_id=initial_packet_id)

    @property
    def overhead(self) -> int:
        return PACKET_ID_LONG_LEN + TLS_CRYPT_TAG_SIZE
