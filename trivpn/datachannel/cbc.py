"""Legacy CBC + HMAC data-channel packets (reference §6.3, §4.2), free of IO and clocks.

Theory of operation
-------------------
OpenVPN before NCP used AES-CBC with a separate HMAC ("encrypt then MAC"). A 2.6 peer
still speaks it when both sides list a CBC cipher in `data-ciphers` (or through
`data-ciphers-fallback`). One packet is::

    [hdr: 1 (V1) or 4 (V2)] [HMAC(hmac key, IV || ct): digest size] [IV: 16] [ct]
    ct = AES-CBC(cipher key, IV, PKCS#7(packet id (4) || payload))

* The HMAC covers the IV and the ciphertext, never the opcode/key id/peer id header.
* The IV is 16 fresh random bytes per packet (CBC needs unpredictable IVs).
* The packet id is the 4-byte short form, *inside* the ciphertext: a receiver learns it
  only after the HMAC has been checked (in constant time) and the packet decrypted, so the
  replay check comes after decryption here, unlike AEAD.
* Keys come from the same 256-byte `key2` as AEAD: for each direction the first
  `key length` bytes of its cipher slot and the first `digest size` bytes of its hmac
  slot (the HMAC key is as long as the digest).

`CBCDirection` seals or opens packets for one direction; `split_key2_cbc` picks our two
directions out of `key2`. The data-channel core (`trivpn.datachannel.core`) owns packet-id
counters, replay windows, framing and keepalive for CBC exactly as for AEAD.

Opening raises only `RemoteProtocolError` (`CBCAuthError` when the HMAC does not match), so
the caller can count forged and malformed packets apart and drop them.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trivpn.datachannel.crypto import (
    KEY2_LEN,
    MAX_CIPHER_KEY_LENGTH,
    MAX_HMAC_KEY_LENGTH,
    PACKET_ID_LEN,
    SUPPORTED_AUTH,
    DataAuthError,
    cbc_key_len,
    normalize_auth_name,
    normalize_data_cipher,
)
from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass

#: AES block size, and so the CBC IV length.
BLOCK = 16
IV_LEN = BLOCK

_PID = struct.Struct(">I")
_pack_pid = _PID.pack
_unpack_pid_from = _PID.unpack_from
_PADS = [bytes((n,)) * n for n in range(BLOCK + 1)]


class CBCAuthError(DataAuthError):
    """The packet's HMAC does not match: forged, corrupted, or keyed with another key."""


@dataclass(frozen=True, slots=True)
class CBCKeys:
    """The key material of one direction of a CBC data channel."""

    cipher_key: bytes
    hmac_key: bytes


def split_key2_cbc(
    key2: bytes, cipher: str, auth: str, *, is_server: bool
) -> tuple[CBCKeys, CBCKeys]:
    """Slice `key2` into (encrypt, decrypt) CBC keys for our side (client: half 0 sends)."""
    if len(key2) != KEY2_LEN:
        raise LocalProtocolError(f"key2 must be {KEY2_LEN} bytes, got {len(key2)}")
    key_len = cbc_key_len(cipher)
    mac_len = SUPPORTED_AUTH[normalize_auth_name(auth)][1]
    key2 = bytes(key2)

    def half(index: int) -> CBCKeys:
        base = index * (MAX_CIPHER_KEY_LENGTH + MAX_HMAC_KEY_LENGTH)
        hmac_slot = base + MAX_CIPHER_KEY_LENGTH
        return CBCKeys(key2[base : base + key_len], key2[hmac_slot : hmac_slot + mac_len])

    if is_server:
        return half(1), half(0)
    return half(0), half(1)


class CBCDirection:
    """One direction of a CBC+HMAC data channel: seals or opens whole packets."""

    __slots__ = ("cipher", "auth", "mac_len", "_aes", "_mac_key", "_digest", "min_len")

    def __init__(self, cipher: str, auth: str, keys: CBCKeys) -> None:
        self.cipher = normalize_data_cipher(cipher)
        self.auth = normalize_auth_name(auth)
        digest, mac_len = SUPPORTED_AUTH[self.auth]
        if len(keys.cipher_key) != cbc_key_len(self.cipher):
            raise LocalProtocolError(
                f"{self.cipher} needs a {cbc_key_len(self.cipher)}-byte key, "
                f"got {len(keys.cipher_key)}"
            )
        if len(keys.hmac_key) != mac_len:
            raise LocalProtocolError(
                f"HMAC-{self.auth} needs a {mac_len}-byte key, got {len(keys.hmac_key)}"
            )
        self.mac_len = mac_len
        self._aes = algorithms.AES(keys.cipher_key)
        self._mac_key = keys.hmac_key
        self._digest = digest
        #: smallest body (after the header) that can hold HMAC, IV and one block
        self.min_len = mac_len + IV_LEN + BLOCK

    def seal(self, packet_id: int, payload: bytes, iv: bytes | None = None) -> bytes:
        """`HMAC || IV || CBC(packet id || payload)`; the caller prepends the header.

        `iv` is only for tests with fixed vectors; normally a fresh random one is drawn.
        """
        if iv is None:
            iv = os.urandom(IV_LEN)
        elif len(iv) != IV_LEN:
            raise LocalProtocolError(f"CBC IV must be {IV_LEN} bytes, got {len(iv)}")
        plain = _pack_pid(packet_id) + payload
        plain += _PADS[BLOCK - len(plain) % BLOCK]
        enc = Cipher(self._aes, modes.CBC(iv)).encryptor()
        body = iv + enc.update(plain) + enc.finalize()
        return hmac.digest(self._mac_key, body, self._digest) + body

    def open(self, packet: bytes, offset: int) -> tuple[int, bytes]:
        """(packet id, payload) of the packet whose body starts at `offset`.

        Raises `CBCAuthError` if the HMAC does not match and `RemoteProtocolError` for a
        malformed packet; nothing is decrypted before the HMAC has been checked.
        """
        mac_len = self.mac_len
        body_at = offset + mac_len
        n = len(packet) - body_at - IV_LEN
        if n < BLOCK or n % BLOCK:
            raise RemoteProtocolError(
                f"CBC packet of {len(packet)} bytes is not HMAC + IV + whole blocks"
            )
        body = packet[body_at:]
        expected = hmac.digest(self._mac_key, body, self._digest)
        if not hmac.compare_digest(expected, packet[offset:body_at]):
            raise CBCAuthError("CBC packet HMAC mismatch")
        dec = Cipher(self._aes, modes.CBC(body[:IV_LEN])).decryptor()
        plain = dec.update(body[IV_LEN:]) + dec.finalize()
        pad = plain[-1]
        if not 1 <= pad <= BLOCK or plain[-pad:] != _PADS[pad]:
            raise RemoteProtocolError("CBC packet has invalid PKCS#7 padding")
        if len(plain) - pad < PACKET_ID_LEN:
            raise RemoteProtocolError("CBC packet too short for a packet id")
        return _unpack_pid_from(plain)[0], plain[PACKET_ID_LEN:-pad]


def make_cbc_directions(
    key2: bytes, cipher: str, auth: str, *, is_server: bool
) -> tuple[CBCDirection, CBCDirection]:
    """(encrypting, decrypting) `CBCDirection`s for our side of the connection."""
    tx, rx = split_key2_cbc(key2, cipher, auth, is_server=is_server)
    return CBCDirection(cipher, auth, tx), CBCDirection(cipher, auth, rx)


def seal_batch(
    enc: CBCDirection,
    header: bytes,
    last_pid: int,
    payloads: Sequence[bytes],
    frame: Callable[[bytes], bytes] | None,
) -> tuple[list[bytes], int]:
    """Wire packets for the non-empty `payloads`, and the last packet id used.

    Packet ids continue from `last_pid` (the first packet carries `last_pid + 1`). The
    random IVs of the whole batch come from one `os.urandom` call.
    """
    sendable = [p for p in payloads if p]
    ivs = os.urandom(IV_LEN * len(sendable))
    out: list[bytes] = []
    pid = last_pid
    seal = enc.seal
    for i, pkt in enumerate(sendable):
        if frame is not None:
            pkt = frame(pkt)
        pid += 1
        out.append(header + seal(pid, pkt, ivs[i * IV_LEN : (i + 1) * IV_LEN]))
    return out, pid


__all__ = [
    "BLOCK",
    "IV_LEN",
    "CBCAuthError",
    "CBCDirection",
    "CBCKeys",
    "make_cbc_directions",
    "seal_batch",
    "split_key2_cbc",
]
