"""Control-channel protection: none, tls-auth (HMAC) and tls-crypt (AES-256-CTR + HMAC-SHA256).

Theory of operation
-------------------
A wrapper sits between the control packet codec (`packet.py`) and the transport. `wrap`
takes a serialized plaintext control packet and returns the bytes to send; `unwrap` does the
reverse and returns the plaintext form, or raises RemoteProtocolError for anything short,
forged or replayed. Both keep the first 9 bytes (op|key_id and the sender's session id) in
the clear at the front, because OpenVPN demultiplexes on them before it authenticates.

Every wrapped packet carries an 8-byte "replay packet-id" (reference §1.6): a 32-bit counter
that starts at 1 (or `initial_packet_id`) and grows on *every* transmission, retransmissions
included, followed by a 32-bit unix time that the caller passes in once (cores never read the
clock). The receiver authenticates first, in constant time, and only then consults its replay
state, so forged packets can never move the window. The replay state follows OpenVPN's
long-form rule: a newer time value from the peer opens a fresh window, an older one is
refused, an equal one goes through the sliding window of `trivpn.replay.ReplayWindow`.

tls-auth (§7.1)::

    op|kid (1) | sid (8) | HMAC (dlen) | pid (4) | time (4) | rest of the plaintext packet
    HMAC = HMAC(key, pid | time | op|kid | sid | rest)

tls-crypt (§7.2), SIV style, the HMAC tag doubles as the CTR IV::

    op|kid (1) | sid (8) | pid (4) | time (4) | tag (32) | AES-256-CTR(rest)
    tag = HMAC-SHA256(Ka, op|kid | sid | pid | time | rest),  IV = tag[:16]

Key slots come from the 256-byte static key laid out as OpenVPN's `struct key2` (§7.1):
keys[i].cipher = data[128*i : 128*i+64], keys[i].hmac = data[128*i+64 : 128*i+128].
"""

from __future__ import annotations

import string
import struct
from dataclasses import field
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trivpn import digests
from trivpn.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.replay import DEFAULT_SEQ_BACKTRACK, DEFAULT_TIME_BACKTRACK, ReplayWindow
from trivpn.wire import MAX_UINT32, PACKET_ID_LONG_LEN, SESSION_ID_LEN

#: Size of an "OpenVPN Static key V1" (2048 bits, `struct key2` with two keys).
STATIC_KEY_LEN = 256
#: Size of one cipher or hmac slot of a key (`MAX_CIPHER_KEY_LENGTH`, `MAX_HMAC_KEY_LENGTH`).
KEY_SLOT_LEN = 64
#: Bytes of the cleartext header both wrappers keep in front: op|key_id + session id.
CLEAR_HEADER_LEN = 1 + SESSION_ID_LEN
#: Long-form replay packet-ids (`PACKET_ID_LONG_LEN`, from trivpn.wire) are 32-bit.
MAX_PACKET_ID = MAX_UINT32
#: tls-crypt constants (`tls_crypt.h`).
TLS_CRYPT_TAG_SIZE = 32
TLS_CRYPT_BLOCK_SIZE = 16
TLS_CRYPT_KEY_LEN = 32  # AES-256 and the first 32 bytes of the hmac slot
TLS_CRYPT_OFF_PID = CLEAR_HEADER_LEN
TLS_CRYPT_OFF_TAG = TLS_CRYPT_OFF_PID + PACKET_ID_LONG_LEN
TLS_CRYPT_OFF_CT = TLS_CRYPT_OFF_TAG + TLS_CRYPT_TAG_SIZE
#: OpenVPN's own sizing figure for tls-crypt (`tls_crypt_buf_overhead`), which reserves a
#: cipher block that CTR never uses; the bytes actually added are `TLSCrypt.overhead` (40).
TLS_CRYPT_BUF_OVERHEAD = PACKET_ID_LONG_LEN + TLS_CRYPT_TAG_SIZE + TLS_CRYPT_BLOCK_SIZE

STATIC_KEY_BEGIN = "-----BEGIN OpenVPN Static key V1-----"
STATIC_KEY_END = "-----END OpenVPN Static key V1-----"

#: `--auth` digests usable for tls-auth, mapped to the names `trivpn.digests` takes.
TLS_AUTH_DIGESTS: dict[str, str] = {
    "SHA1": "sha1",
    "SHA224": "sha224",
    "SHA256": "sha256",
    "SHA384": "sha384",
    "SHA512": "sha512",
}

_PID = struct.Struct("!II")
_HEX = frozenset(string.hexdigits)


@dataclass(frozen=True, slots=True)
class StaticKey:
    """The 256-byte "OpenVPN Static key V1" shared by tls-auth and tls-crypt."""

    data: bytes = field(repr=False)  # secret: keep it out of logs and tracebacks

    def __post_init__(self) -> None:
        if not isinstance(self.data, bytes | bytearray) or len(self.data) != STATIC_KEY_LEN:
            raise ConfigError(f"static key must be exactly {STATIC_KEY_LEN} bytes")
        object.__setattr__(self, "data", bytes(self.data))

    @classmethod
    def from_text(cls, text: str) -> StaticKey:
        """Parse the PEM-like hex block; text outside the BEGIN/END lines is ignored."""
        if STATIC_KEY_BEGIN not in text and "tls-crypt-v2" in text:
            raise ConfigError("static key: this is a tls-crypt-v2 key, not a static key")
        digits = "".join(armored_body(text, STATIC_KEY_BEGIN, STATIC_KEY_END, "static key").split())
        bad = next((c for c in digits if c not in _HEX), None)
        if bad is not None:
            raise ConfigError(f"static key: non-hex character {bad!r} in the key block")
        if len(digits) != 2 * STATIC_KEY_LEN:
            raise ConfigError(
                f"static key: expected {2 * STATIC_KEY_LEN} hex digits "
                f"({STATIC_KEY_LEN} bytes), found {len(digits)}"
            )
        return cls(bytes.fromhex(digits))

    def to_text(self) -> str:
        """Render in the layout `openvpn --genkey secret` writes (16 lines of 32 digits)."""
        hexed = self.data.hex()
        lines = [hexed[i : i + 32] for i in range(0, len(hexed), 32)]
        return "\n".join(
            [
                "#",
                "# 2048 bit OpenVPN static key",
                "#",
                STATIC_KEY_BEGIN,
                *lines,
                STATIC_KEY_END,
                "",
            ]
        )

    def _slot(self, index: int, offset: int) -> bytes:
        if index not in (0, 1):
            raise LocalProtocolError(f"static key index must be 0 or 1, not {index!r}")
        base = 2 * KEY_SLOT_LEN * index + offset
        return self.data[base : base + KEY_SLOT_LEN]

    def cipher(self, index: int) -> bytes:
        """The 64-byte `keys[index].cipher` slot."""
        return self._slot(index, 0)

    def hmac(self, index: int) -> bytes:
        """The 64-byte `keys[index].hmac` slot."""
        return self._slot(index, KEY_SLOT_LEN)


class ControlWrap(Protocol):
    """What the control-channel service needs from a wrapper."""

    overhead: int

    def wrap(self, packet: bytes, now: float) -> bytes: ...

    def unwrap(self, data: bytes, now: float) -> bytes: ...


class NoWrap:
    """No protection: packets travel in their plaintext form."""

    __slots__ = ("overhead",)

    def __init__(self) -> None:
        self.overhead = 0

    def wrap(self, packet: bytes, now: float) -> bytes:
        return bytes(packet)

    def unwrap(self, data: bytes, now: float) -> bytes:
        return bytes(data)


class _ReplayIds:
    """Outgoing replay packet-id counter plus the incoming replay state of one peer."""

    __slots__ = ("next_id", "timestamp", "_peer_time", "_window", "_size", "_backtrack")

    def __init__(self, timestamp: int, initial_id: int, size: int, backtrack: float) -> None:
        if not 0 <= timestamp <= MAX_PACKET_ID:
            raise LocalProtocolError(f"timestamp {timestamp} does not fit 32 bits")
        if not 1 <= initial_id <= MAX_PACKET_ID:
            raise LocalProtocolError(f"initial_packet_id {initial_id} outside 1..2**32-1")
        self.next_id = initial_id
        self.timestamp = timestamp
        self._peer_time = -1
        self._window: ReplayWindow | None = None
        self._size = size
        self._backtrack = backtrack

    def take(self) -> bytes:
        """The 8 bytes for the next transmission; the counter is never reused."""
        pid = self.next_id
        if pid > MAX_PACKET_ID:
            raise LocalProtocolError("tls-auth/tls-crypt packet id space exhausted")
        self.next_id = pid + 1
        return _PID.pack(pid, self.timestamp)

    def would_accept(self, raw: bytes, now: float) -> bool:
        """What `accept` would answer, without recording anything."""
        packet_id, peer_time = _PID.unpack(raw)
        window = self._window
        if window is None or peer_time > self._peer_time:
            return bool(packet_id > 0)
        if peer_time < self._peer_time:
            return False
        return window.check(packet_id, now)

    def accept(self, raw: bytes, now: float) -> bool:
        """Record an authentic packet's id/time; False if it is replayed or too old."""
        packet_id, peer_time = _PID.unpack(raw)
        window = self._window
        if window is None or peer_time > self._peer_time:
            fresh = ReplayWindow(self._size, self._backtrack)
            if not fresh.check_and_update(packet_id, now):
                return False
            self._window = fresh
            self._peer_time = peer_time
            return True
        if peer_time < self._peer_time:
            return False
        return window.check_and_update(packet_id, now)


def _digest_name(digest: str) -> str:
    name = TLS_AUTH_DIGESTS.get(digest.upper().replace("-", ""))
    if name is None:
        raise ConfigError(
            f"tls-auth: unsupported auth digest {digest!r} (use SHA1, SHA224, SHA256, SHA384 or SHA512)"
        )
    return name


class TLSAuth:
    """tls-auth: an HMAC over every control packet, keyed by `key-direction` (§7.1)."""

    __slots__ = ("overhead", "_dlen", "_send_mac", "_recv_mac", "_ids")

    def __init__(
        self,
        key: StaticKey,
        direction: int | None,
        digest: str = "SHA1",
        *,
        timestamp: int,
        initial_packet_id: int = 1,
        replay_window: int = DEFAULT_SEQ_BACKTRACK,
        replay_time: float = DEFAULT_TIME_BACKTRACK,
    ) -> None:
        name = _digest_name(digest)
        if direction is None:
            send_index, recv_index = 0, 0
        elif direction == 0:
            send_index, recv_index = 0, 1
        elif direction == 1:
            send_index, recv_index = 1, 0
        else:
            raise ConfigError(f"key-direction must be 0 or 1, not {direction!r}")
        dlen = digests.algorithm(name).digest_size
        self._dlen = dlen
        # Keyed HMAC objects are copied per packet, which skips re-deriving the key pads.
        self._send_mac = digests.hmac_key(key.hmac(send_index)[:dlen], name)
        self._recv_mac = digests.hmac_key(key.hmac(recv_index)[:dlen], name)
        self._ids = _ReplayIds(timestamp, initial_packet_id, replay_window, replay_time)
        self.overhead = dlen + PACKET_ID_LONG_LEN

    @property
    def next_packet_id(self) -> int:
        """Replay packet-id the next `wrap` will write."""
        return self._ids.next_id

    def wrap(self, packet: bytes, now: float) -> bytes:
        if len(packet) < CLEAR_HEADER_LEN:
            raise LocalProtocolError("control packet shorter than its 9-byte header")
        pid = self._ids.take()
        mac = self._send_mac.copy()
        mac.update(pid)
        mac.update(packet)
        return b"".join((packet[:CLEAR_HEADER_LEN], mac.finalize(), pid, packet[CLEAR_HEADER_LEN:]))

    def _open(self, data: bytes) -> tuple[bytes, bytes]:
        """(plaintext packet, replay id) of an authentic packet; no replay check yet."""
        data = bytes(data)
        tag_end = CLEAR_HEADER_LEN + self._dlen
        body = tag_end + PACKET_ID_LONG_LEN
        if len(data) < body:
            raise RemoteProtocolError("tls-auth: packet too short")
        pid = data[tag_end:body]
        mac = self._recv_mac.copy()
        mac.update(pid)
        mac.update(data[:CLEAR_HEADER_LEN])
        mac.update(data[body:])
        if not digests.hmac_matches(mac, data[CLEAR_HEADER_LEN:tag_end]):
            raise RemoteProtocolError("tls-auth: HMAC verification failed")
        return data[:CLEAR_HEADER_LEN] + data[body:], pid

    def unwrap(self, data: bytes, now: float) -> bytes:
        plain, pid = self._open(data)
        if not self._ids.accept(pid, now):
            raise RemoteProtocolError("tls-auth: replayed or stale packet id")
        return plain

    def verifies(self, data: bytes, now: float) -> bool:
        """Would `unwrap` accept `data`? Records nothing (the server's float check)."""
        try:
            _, pid = self._open(data)
        except RemoteProtocolError:
            return False
        return self._ids.would_accept(pid, now)


class TLSCrypt:
    """tls-crypt: encrypt-and-authenticate every control packet with a shared key (§7.2).

    The server uses the key NORMAL (send keys[0], receive keys[1]), the client INVERSE.
    """

    __slots__ = ("overhead", "_send_ke", "_recv_ke", "_send_mac", "_recv_mac", "_ids")

    def __init__(
        self,
        key: StaticKey,
        *,
        server: bool = False,
        timestamp: int,
        initial_packet_id: int = 1,
        replay_window: int = DEFAULT_SEQ_BACKTRACK,
        replay_time: float = DEFAULT_TIME_BACKTRACK,
    ) -> None:
        send_index, recv_index = (0, 1) if server else (1, 0)
        self._send_ke = key.cipher(send_index)[:TLS_CRYPT_KEY_LEN]
        self._recv_ke = key.cipher(recv_index)[:TLS_CRYPT_KEY_LEN]
        self._send_mac = digests.hmac_key(key.hmac(send_index)[:TLS_CRYPT_KEY_LEN], "sha256")
        self._recv_mac = digests.hmac_key(key.hmac(recv_index)[:TLS_CRYPT_KEY_LEN], "sha256")
        self._ids = _ReplayIds(timestamp, initial_packet_id, replay_window, replay_time)
        self.overhead = PACKET_ID_LONG_LEN + TLS_CRYPT_TAG_SIZE

    @property
    def next_packet_id(self) -> int:
        """Replay packet-id the next `wrap` will write."""
        return self._ids.next_id

    def wrap(self, packet: bytes, now: float) -> bytes:
        if len(packet) < CLEAR_HEADER_LEN:
            raise LocalProtocolError("control packet shorter than its 9-byte header")
        return self._seal(packet[:CLEAR_HEADER_LEN], packet[CLEAR_HEADER_LEN:])

    def _seal(self, header: bytes, plaintext: bytes) -> bytes:
        """OpenVPN's `tls_crypt_wrap` on top of whatever header is already in the buffer."""
        pid = self._ids.take()
        mac = self._send_mac.copy()
        mac.update(header)
        mac.update(pid)
        mac.update(plaintext)
        tag = mac.finalize()
        enc = Cipher(algorithms.AES(self._send_ke), modes.CTR(tag[:16])).encryptor()
        return b"".join((header, pid, tag, enc.update(plaintext), enc.finalize()))

    def _open(self, data: bytes) -> bytes:
        """The plaintext packet of an authentic `data`; no replay check yet."""
        data = bytes(data)
        if len(data) < TLS_CRYPT_OFF_CT:
            raise RemoteProtocolError("tls-crypt: packet too short")
        tag = data[TLS_CRYPT_OFF_TAG:TLS_CRYPT_OFF_CT]
        dec = Cipher(algorithms.AES(self._recv_ke), modes.CTR(tag[:16])).decryptor()
        plaintext = dec.update(data[TLS_CRYPT_OFF_CT:]) + dec.finalize()
        mac = self._recv_mac.copy()
        mac.update(data[:TLS_CRYPT_OFF_TAG])  # header and replay packet-id
        mac.update(plaintext)
        if not digests.hmac_matches(mac, tag):
            raise RemoteProtocolError("tls-crypt: authentication tag mismatch")
        return data[:CLEAR_HEADER_LEN] + plaintext

    def unwrap(self, data: bytes, now: float) -> bytes:
        plain = self._open(data)
        if not self._ids.accept(data[TLS_CRYPT_OFF_PID:TLS_CRYPT_OFF_TAG], now):
            raise RemoteProtocolError("tls-crypt: replayed or stale packet id")
        return plain

    def verifies(self, data: bytes, now: float) -> bool:
        """Would `unwrap` accept `data`? Records nothing (the server's float check)."""
        try:
            self._open(data)
        except RemoteProtocolError:
            return False
        return self._ids.would_accept(data[TLS_CRYPT_OFF_PID:TLS_CRYPT_OFF_TAG], now)


def armored_body(text: str, begin_line: str, end_line: str, what: str) -> str:
    """The text between OpenVPN's BEGIN/END marker lines (ConfigError if one is missing)."""
    begin = text.find(begin_line)
    if begin < 0:
        raise ConfigError(f"{what}: missing '{begin_line}' line")
    start = begin + len(begin_line)
    end = text.find(end_line, start)
    if end < 0:
        raise ConfigError(f"{what}: missing '{end_line}' line")
    return text[start:end]


# ---- tls-crypt-v2 client keys ------------------------------------------------------------

TLS_CRYPT_V2_CLIENT_BEGIN = "-----BEGIN OpenVPN tls-crypt-v2 client key-----"
TLS_CRYPT_V2_CLIENT_END = "-----END OpenVPN tls-crypt-v2 client key-----"
#: The server refuses wrapped client keys longer than this (tls-crypt-v2.txt).
TLS_CRYPT_V2_MAX_WKC_LEN = 1024
#: A client that starts its replay ids here tells a 2.6 server it can do the stateless
#: (cookie) handshake; the server tests `(id & 0xff000000) == 0x0f000000`.
EARLY_NEG_START = 0x0F000000


@dataclass(frozen=True, slots=True)
class TLSCryptV2ClientKey:
    """A tls-crypt-v2 client key: Kc (used like a tls-crypt key) and the server-wrapped WKc.

    The client cannot read WKc (it is sealed with the server's key); it only sends it along
    so that a server holding no per-client state can recover Kc.
    """

    key: StaticKey = field(repr=False)
    wkc: bytes = field(repr=False)

    @classmethod
    def from_text(cls, text: str) -> TLSCryptV2ClientKey:
        import base64
        import binascii

        if TLS_CRYPT_V2_CLIENT_BEGIN not in text and "tls-crypt-v2 server key" in text:
            raise ConfigError("tls-crypt-v2: this is the server's key; the client needs a client key")
        body = armored_body(text, TLS_CRYPT_V2_CLIENT_BEGIN, TLS_CRYPT_V2_CLIENT_END, "tls-crypt-v2")
        try:
            blob = base64.b64decode("".join(body.split()), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("tls-crypt-v2: the client key is not valid base64") from None
        wkc = blob[STATIC_KEY_LEN:]
        if len(wkc) < 2 + 32 or len(wkc) > TLS_CRYPT_V2_MAX_WKC_LEN:
            raise ConfigError(f"tls-crypt-v2: client key of {len(blob)} bytes is malformed")
        if int.from_bytes(wkc[-2:], "big") != len(wkc):
            raise ConfigError("tls-crypt-v2: the wrapped key's length field does not match")
        return cls(StaticKey(blob[:STATIC_KEY_LEN]), wkc)

