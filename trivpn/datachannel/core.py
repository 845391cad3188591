"""Sans-IO core of the data channel: AEAD packets, packet ids, replay, framing, keepalive.

Theory of operation
-------------------
Wire layout of one data packet (reference §6.2, OpenVPN 2.6 "tag first" AEAD format)::

    P_DATA_V2: [op|kid, peer-id (3)] [packet id (4)] [tag (16)] [ciphertext]
    P_DATA_V1: [op|kid]              [packet id (4)] [tag (16)] [ciphertext]

    nonce = packet id (4) || implicit IV (8)
    AD    = header || packet id  (V2)      packet id alone (V1: the opcode is unauthenticated)

`cryptography` returns `ciphertext || tag`, so each packet is reassembled with the tag moved
to the front on the way out and back to the end on the way in. Measured on this machine, plain
`bytes` concatenation beats `encrypt_into`/`decrypt_into` with preallocated buffers (the
memoryview slicing and final copy cost more than they save), so the hot loops use it.

Keys: at most two. `install_key` makes a new *primary* (the only key we encrypt with) and
demotes the previous primary to *lame duck*, which still decrypts packets the peer sent
before it switched. Received packets pick their key by the key id in the first byte
through an 8-entry table; anything else is counted as `drop_no_key`. Each key has its own
send counter (starting at 1) and its own replay window, updated only after the tag checks.

The plaintext is `[compression framing] || payload` (§6.4). Every outgoing payload is
framed, pings and OCC messages included; incoming payloads are un-framed before the magic
ping / OCC prefixes are recognised. Pings are consumed; OCC EXIT sets `peer_exited`.

Legacy CBC (an AES-*-CBC cipher with an `auth` HMAC digest, reference §6.3) shares keys,
packet ids, replay windows, framing and keepalive with AEAD; only sealing and opening differ,
and live in `trivpn.datachannel.cbc`. Its packet id sits inside the ciphertext, so
`_decrypt_cbc` checks the HMAC, decrypts, and only then checks for replays.

Nothing received is ever raised: each bad packet is dropped and counted in `stats`.
Counters are accumulated in locals and written once per batch to keep the loop lean.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from cryptography.exceptions import InvalidTag

from trivpn.controlchannel.packet import Opcode
from trivpn.datachannel.cbc import CBCAuthError, make_cbc_directions
from trivpn.datachannel.cbc import seal_batch as cbc_seal_batch
from trivpn.datachannel.crypto import (
    OPENVPN_AEAD_TAG_LENGTH,
    PACKET_ID_LEN,
    is_cbc,
    make_cipher,
    normalize_auth_name,
    normalize_data_cipher,
    split_key2,
)
from trivpn.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from trivpn.replay import DEFAULT_SEQ_BACKTRACK, DEFAULT_TIME_BACKTRACK, ReplayWindow

#: Keepalive payload (`ping_string`, ping.c).
PING_MAGIC = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")
#: Prefix of every OCC message (`occ_magic`, occ.c); one opcode byte follows.
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")
#: OCC opcode meaning "the peer is exiting" (explicit-exit-notify without cc-exit).
OCC_EXIT = 6

#: Highest packet id; once it has been used the key can send no more (`PACKET_ID_MAX`).
PACKET_ID_MAX = 0xFFFFFFFF
#: From this id on the key should be renegotiated (`PACKET_ID_WRAP_TRIGGER`).
PACKET_ID_WRAP_TRIGGER = 0xFF000000
#: Largest 24-bit peer id; 0xFFFFFF itself means "no peer id" to OpenVPN (`MAX_PEER_ID`).
MAX_PEER_ID = 0xFFFFFF
#: OpenVPN's upper bound for `--replay-window n` (`MAX_SEQ_BACKTRACK`).
MAX_SEQ_BACKTRACK = 65536
#: `P_OPCODE_SHIFT` / `P_KEY_ID_MASK`.
P_OPCODE_SHIFT = 3
P_KEY_ID_MASK = 0x07
#: Framing bytes (comp.h): "comp-lzo no" prefix, "compress stub" swap marker, v2 escape.
NO_COMPRESS_BYTE = 0xFA
NO_COMPRESS_BYTE_SWAP = 0xFB
COMP_ALGV2_INDICATOR_BYTE = 0x50
#: Second byte of the stub-v2 escape we send; upstream's encoder writes 0x0A, decoders want 0.
COMP_ALGV2_UNCOMPRESSED_SENT = 0x00
COMP_ALGV2_UNCOMPRESSED_LENIENT = 0x0A

_TAG = OPENVPN_AEAD_TAG_LENGTH
_V1_HDR_LEN = 1
_V2_HDR_LEN = 4
_MIN_V1 = _V1_HDR_LEN + PACKET_ID_LEN + _TAG
_MIN_V2 = _V2_HDR_LEN + PACKET_ID_LEN + _TAG
_OP_V1 = int(Opcode.DATA_V1)
_OP_V2 = int(Opcode.DATA_V2)

_PID = struct.Struct(">I")
_HDR_PID = struct.Struct(">II")  # V2 header word followed by the packet id: exactly the AD
_pack_pid = _PID.pack
_pack_hdr_pid = _HDR_PID.pack
_unpack_pid_from = _PID.unpack_from


class Compression(Enum):
    """Compression framing agreed with the peer; no algorithm is ever applied."""

    NONE = "none"  # 2.6 default: no framing byte at all
    LZO_NO = "lzo-no"  # "comp-lzo no": 0xFA prefix
    STUB = "stub"  # "compress" / "compress stub": first byte swapped to the end, 0xFB
    STUB_V2 = "stub-v2"  # "compress stub-v2": 0x50 0x00 escape only when byte0 is 0x50


def _frame_lzo_no(p: bytes) -> bytes:
    return b"\xfa" + p


def _frame_stub(p: bytes) -> bytes:
    return b"\xfb" + p[1:] + p[:1]


def _frame_stub_v2(p: bytes) -> bytes:
    return b"\x50\x00" + p if p[0] == COMP_ALGV2_INDICATOR_BYTE else p


def _unframe_lzo_no(p: bytes) -> bytes | None:
    if not p:
        return p
    return p[1:] if p[0] == NO_COMPRESS_BYTE else None


def _unframe_stub(p: bytes) -> bytes | None:
    if not p:
        return p
    if p[0] != NO_COMPRESS_BYTE_SWAP:
        return None
    return p[-1:] + p[1:-1] if len(p) > 1 else b""


def _unframe_stub_v2(p: bytes) -> bytes | None:
    if not p or p[0] != COMP_ALGV2_INDICATOR_BYTE:
        return p
    if len(p) >= 2 and p[1] in (COMP_ALGV2_UNCOMPRESSED_SENT, COMP_ALGV2_UNCOMPRESSED_LENIENT):
        return p[2:]
    return None  # 0x50 0x01 (lz4-v2) or garbage: we cannot decompress


_Framer = Callable[[bytes], bytes]
_Unframer = Callable[[bytes], bytes | None]

_FRAMING: dict[Compression, tuple[_Framer | None, _Unframer | None]] = {
    Compression.NONE: (None, None),
    Compression.LZO_NO: (_frame_lzo_no, _unframe_lzo_no),
    Compression.STUB: (_frame_stub, _unframe_stub),
    Compression.STUB_V2: (_frame_stub_v2, _unframe_stub_v2),
}


@dataclass(slots=True)
class DataStats:
    """Counters of the data channel; `*_bytes` count IP payload bytes, not wire bytes."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_pings: int = 0
    rx_pings: int = 0
    tx_occ: int = 0
    rx_occ: int = 0
    rx_empty: int = 0
    drop_malformed: int = 0
    drop_auth: int = 0
    drop_replay: int = 0
    drop_no_key: int = 0
    drop_compression: int = 0


class _Key:
    """One key id's state: both AEAD objects, send counter, replay window, header."""

    __slots__ = ("key_id", "enc", "enc_iv", "dec", "dec_iv", "send_pid", "replay", "hdr")

    def __init__(
        self,
        key_id: int,
        key2: bytes,
        cipher: str,
        is_server: bool,
        replay: ReplayWindow,
        cbc_auth: str | None = None,
    ) -> None:
        self.key_id = key_id
        if cbc_auth is not None:  # enc/dec are CBCDirection objects, no implicit IV
            self.enc, self.dec = make_cbc_directions(key2, cipher, cbc_auth, is_server=is_server)
            self.enc_iv = self.dec_iv = b""
        else:
            tx, rx = split_key2(key2, cipher, is_server=is_server)
            self.enc = make_cipher(cipher, tx.cipher_key)
            self.enc_iv = tx.implicit_iv
            self.dec = make_cipher(cipher, rx.cipher_key)
            self.dec_iv = rx.implicit_iv
        self.send_pid = 0  # last id used; the first packet carries 1
        self.replay = replay
        self.hdr: int = 0  # V2 header word, or V1 header byte value


class DataChannel:
    """The data channel of one session (client or server side), free of IO and clocks."""

    def __init__(
        self,
        *,
        cipher: str,
        is_server: bool = False,
        peer_id: int | None = None,
        compression: Compression = Compression.NONE,
        ping_interval: float = 0.0,
        replay_window: int = DEFAULT_SEQ_BACKTRACK,
        replay_time: float = DEFAULT_TIME_BACKTRACK,
        auth: str | None = None,
    ) -> None:
        """`auth` is the HMAC digest of a CBC cipher (the profile's `auth`, e.g. SHA256);
        AEAD ciphers ignore it, as OpenVPN does."""
        self.cipher = normalize_data_cipher(cipher)
        #: the CBC HMAC digest, or None with an AEAD cipher
        self.auth: str | None = None
        if is_cbc(self.cipher):
            if auth is None:
                raise ConfigError(
                    f"cipher {self.cipher} needs the HMAC digest of the profile's 'auth' option"
                )
            self.auth = normalize_auth_name(auth)
        if peer_id is not None and not 0 <= peer_id <= MAX_PEER_ID:
            raise ConfigError(f"peer-id {peer_id} is out of range (0..{MAX_PEER_ID})")
        if ping_interval < 0:
            raise ConfigError(f"ping interval must not be negative, got {ping_interval:g}")
        if not 1 <= replay_window <= MAX_SEQ_BACKTRACK:
            raise ConfigError(f"replay-window {replay_window} is out of range (1..65536)")
        if replay_time < 0:
            raise ConfigError(f"replay-window time must not be negative, got {replay_time:g}")
        if not isinstance(compression, Compression):
            raise ConfigError(f"unknown compression framing {compression!r}")
        self.is_server = is_server
        self.peer_id = peer_id
        self.compression = compression
        self.ping_interval = float(ping_interval)
        self.replay_window = replay_window
        self.replay_time = float(replay_time)
        self._frame, self._unframe = _FRAMING[compression]
        self._ping_payload = self._framed(PING_MAGIC)
        self._exit_payload = self._framed(OCC_MAGIC + bytes([OCC_EXIT]))
        self._primary: _Key | None = None
        self._lame: _Key | None = None
        self._by_id: list[_Key | None] = [None] * (P_KEY_ID_MASK + 1)
        self._last_sent = 0.0
        self._ping_due = False
        self.peer_exited = False
        self.last_received = 0.0
        self.stats = DataStats()

    def _framed(self, payload: bytes) -> bytes:
        return payload if self._frame is None else self._frame(payload)

    # -- keys -------------------------------------------------------------------------------

    def install_key(self, key_id: int, key2: bytes, now: float) -> None:
        """Make `key2` the sending key; the previous primary is kept for decryption only."""
        if not 0 <= key_id <= P_KEY_ID_MASK:
            raise LocalProtocolError(f"key id {key_id} is out of range (0..7)")
        key = _Key(
            key_id,
            key2,
            self.cipher,
            self.is_server,
            ReplayWindow(self.replay_window, self.replay_time),
            self.auth,
        )
        if self.peer_id is not None:
            key.hdr = ((_OP_V2 << P_OPCODE_SHIFT | key_id) << 24) | self.peer_id
        else:
            key.hdr = _OP_V1 << P_OPCODE_SHIFT | key_id
        old = self._primary
        if old is None:
            self._last_sent = now  # the first ping is due one interval after keying
        self._lame = old if old is not None and old.key_id != key_id else None
        self._primary = key
        self._rebuild_table()

    def retire_lame_duck(self) -> None:
        """Forget the previous key (its transition window is over)."""
        self._lame = None
        self._rebuild_table()

    def _rebuild_table(self) -> None:
        table: list[_Key | None] = [None] * (P_KEY_ID_MASK + 1)
        for key in (self._lame, self._primary):  # primary last: it wins a (theoretical) tie
            if key is not None:
                table[key.key_id] = key
        self._by_id = table

    @property
    def ready(self) -> bool:
        """True once a key is installed (we can encrypt)."""
        return self._primary is not None

    @property
    def primary_key_id(self) -> int | None:
        return None if self._primary is None else self._primary.key_id

    @property
    def lame_duck_key_id(self) -> int | None:
        return None if self._lame is None else self._lame.key_id

    @property
    def needs_renegotiation(self) -> bool:
        """True once the sending key's packet ids approach wrapping (OpenVPN soft-resets)."""
        key = self._primary
        return key is not None and key.send_pid >= PACKET_ID_WRAP_TRIGGER

    # -- sending ----------------------------------------------------------------------------

    def _seal(self, payloads: Sequence[bytes], frame: _Framer | None) -> list[bytes]:
        """Encrypt non-empty payloads with the primary key; the caller updates stats/timer."""
        key = self._primary
        if key is None:
            raise LocalProtocolError("no data-channel key is installed")
        pid = key.send_pid
        if pid + len(payloads) > PACKET_ID_MAX:
            raise LocalProtocolError(
                "data-channel packet ids are exhausted for this key; renegotiate first"
            )
        if self.auth is not None:
            hdr_b = key.hdr.to_bytes(4, "big") if self.peer_id is not None else bytes((key.hdr,))
            cbc_out, key.send_pid = cbc_seal_batch(key.enc, hdr_b, pid, payloads, frame)
            return cbc_out
        out: list[bytes] = []
        append = out.append
        enc = key.enc.encrypt
        iv = key.enc_iv
        hdr = key.hdr
        if self.peer_id is not None:
            for pkt in payloads:
                if not pkt:
                    continue
                if frame is not None:
                    pkt = frame(pkt)
                pid += 1
                ad = _pack_hdr_pid(hdr, pid)
                ct = enc(ad[4:] + iv, pkt, ad)
                append(ad + ct[-16:] + ct[:-16])
        else:
            hdr_b = bytes((hdr,))
            for pkt in payloads:
                if not pkt:
                    continue
                if frame is not None:
                    pkt = frame(pkt)
                pid += 1
                p = _pack_pid(pid)
                ct = enc(p + iv, pkt, p)
                append(hdr_b + p + ct[-16:] + ct[:-16])
        key.send_pid = pid
        return out

    def encrypt(self, ip_packets: Sequence[bytes], now: float) -> list[bytes]:
        """Wire packets for a batch of IP packets (empty packets are skipped)."""
        out = self._seal(ip_packets, self._frame)
        if out:
            stats = self.stats
            stats.tx_packets += len(out)
            stats.tx_bytes += sum(map(len, ip_packets))
            self._last_sent = now
            self._ping_due = False
        return out

    def exit_packet(self, now: float) -> bytes:
        """One encrypted OCC EXIT (explicit-exit-notify when cc-exit is not negotiated)."""
        (pkt,) = self._seal((self._exit_payload,), None)
        self.stats.tx_occ += 1
        self._last_sent = now
        return pkt

    # -- keepalive --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When the next keepalive ping is due, or None if pings are off or there is no key."""
        if self.ping_interval <= 0 or self._primary is None:
            return None
        return self._last_sent + self.ping_interval

    def handle_timer(self, now: float) -> None:
        """Mark a ping as due if nothing was sent for `ping_interval` seconds."""
        due = self.get_timer()
        if due is not None and now >= due:
            self._ping_due = True

    def packets_to_send(self, now: float) -> list[bytes]:
        """Encrypted keepalive pings that are due now (at most one)."""
        if not self._ping_due:
            due = self.get_timer()
            if due is None or now < due:
                return []
        self._ping_due = False
        if self._primary is None:
            return []
        out = self._seal((self._ping_payload,), None)
        self.stats.tx_pings += 1
        self._last_sent = now
        return out

    # -- receiving --------------------------------------------------------------------------

    def decrypt(self, wire_packets: Sequence[bytes], now: float) -> list[bytes]:
        """Plaintext IP packets from a batch of wire packets; bad ones are dropped and counted."""
        if self.auth is not None:
            return self._decrypt_cbc(wire_packets, now)
        out: list[bytes] = []
        append = out.append
        by_id = self._by_id
        unframe = self._unframe
        ping = PING_MAGIC
        rx = rx_bytes = pings = malformed = auth = replayed = no_key = comp = empty = occ = 0
        authentic = False
        for w in wire_packets:
            n = len(w)
            if n < _MIN_V1:
                malformed += 1
                continue
            b0 = w[0]
            op = b0 >> P_OPCODE_SHIFT
            if op == _OP_V2:
                if n < _MIN_V2:
                    malformed += 1
                    continue
                off = _V2_HDR_LEN
                ad_start = 0
            elif op == _OP_V1:
                off = _V1_HDR_LEN
                ad_start = _V1_HDR_LEN
            else:
                malformed += 1
                continue
            key = by_id[b0 & P_KEY_ID_MASK]
            if key is None:
                no_key += 1
                continue
            pid = _unpack_pid_from(w, off)[0]
            window = key.replay
            # In-order ids (the common case) are above the window; skip the full check then.
            if pid <= window.highest and not window.check(pid, now):
                replayed += 1
                continue
            tag_at = off + PACKET_ID_LEN
            ct_at = tag_at + _TAG
            try:
                pt = key.dec.decrypt(
                    w[off:tag_at] + key.dec_iv, w[ct_at:] + w[tag_at:ct_at], w[ad_start:tag_at]
                )
            except InvalidTag:
                auth += 1
                continue
            window.update(pid, now)
            authentic = True
            if unframe is not None:
                pt = unframe(pt)
                if pt is None:
                    comp += 1
                    continue
            if pt == ping:
                pings += 1
                continue
            if not pt:
                empty += 1
                continue
            if pt[0] == 0x28 and pt.startswith(OCC_MAGIC):
                occ += 1
                if len(pt) > len(OCC_MAGIC) and pt[len(OCC_MAGIC)] == OCC_EXIT:
                    self.peer_exited = True
                continue
            rx += 1
            rx_bytes += len(pt)
            append(pt)
        if authentic:
            self.last_received = now
        stats = self.stats
        stats.rx_packets += rx
        stats.rx_bytes += rx_bytes
        if pings or occ or empty:
            stats.rx_pings += pings
            stats.rx_occ += occ
            stats.rx_empty += empty
        if malformed or auth or replayed or no_key or comp:
            stats.drop_malformed += malformed
            stats.drop_auth += auth
            stats.drop_replay += replayed
            stats.drop_no_key += no_key
            stats.drop_compression += comp
        return out

    def _decrypt_cbc(self, wire_packets: Sequence[bytes], now: float) -> list[bytes]:
        """`decrypt` for CBC keys: HMAC, then decryption, then the replay check (§6.3).

        Authentic plaintexts are treated exactly as in the AEAD loop. CBC is the legacy
        path, so this loop favours plainness over the AEAD loop's micro-optimisations.
        """
        out: list[bytes] = []
        stats = self.stats
        unframe = self._unframe
        for w in wire_packets:
            op = w[0] >> P_OPCODE_SHIFT if w else -1
            off = _V2_HDR_LEN if op == _OP_V2 else _V1_HDR_LEN if op == _OP_V1 else 0
            if not off:
                stats.drop_malformed += 1
                continue
            key = self._by_id[w[0] & P_KEY_ID_MASK]
            if key is None:
                stats.drop_no_key += 1
                continue
            try:
                pid, pt = key.dec.open(w, off)
            except CBCAuthError:
                stats.drop_auth += 1
                continue
            except RemoteProtocolError:
                stats.drop_malformed += 1
                continue
            if not key.replay.check(pid, now):
                stats.drop_replay += 1
                continue
            key.replay.update(pid, now)
            self.last_received = now
            if unframe is not None:
                framed = unframe(pt)
                if framed is None:
                    stats.drop_compression += 1
                    continue
                pt = framed
            if pt == PING_MAGIC:
                stats.rx_pings += 1
            elif not pt:
                stats.rx_empty += 1
            elif pt[0] == 0x28 and pt.startswith(OCC_MAGIC):
                stats.rx_occ += 1
                if len(pt) > len(OCC_MAGIC) and pt[len(OCC_MAGIC)] == OCC_EXIT:
                    self.peer_exited = True
            else:
                stats.rx_packets += 1
                stats.rx_bytes += len(pt)
                out.append(pt)
        return out


__all__ = [
    "OCC_EXIT",
    "OCC_MAGIC",
    "PACKET_ID_MAX",
    "PACKET_ID_WRAP_TRIGGER",
    "PING_MAGIC",
    "Compression",
    "DataChannel",
    "DataStats",
]
