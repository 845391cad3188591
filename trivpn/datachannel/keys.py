"""Data-channel keys and the immutable key table both directions read (free of IO and clocks).

Theory of operation
-------------------
A data channel has at most two keys at once, in three roles: the *primary* (the key we seal
with), the *lame duck* (the previous primary, still opening packets the peer sealed before it
switched, until the key schedule retires it with `RetireKey`) and the *pending* key (installed
for receiving only, `InstallKey(send_now=False)`). Installing a pending key drops the lame
duck, so a table holds primary + lame duck or primary + pending, never three keys. All of it
lives in a `KeyTable`: a frozen object that also maps the 3-bit key id of a received packet
to its key. Nothing in a table or in a key ever changes after construction: an install, an
activation or a retirement builds a *new* table and publishes it with one reference
assignment to `KeySlot.table`.

Receive early, send late. A renegotiated key arrives at the two ends at different moments
(a server derives it one control round trip before the client). A side that installs it
receive-only keeps sealing with its primary until the peer *proves* it has the new key: the
first authentic packet the receiving side opens with the pending key. The receiver records
that in `KeySlot.proven` (it alone writes that field), the sender reads it once per batch and
seals with the pending key from then on (see `KeySlot` for why that is safe without a lock).
As a fallback for a silent peer the key schedule later sends `ActivateKey`, which makes the
pending key the primary (and the old primary the lame duck) in a new table. Tables only move
forward: a pending key leaves a table only by becoming its primary, so a sender never
returns to a key it has left (that would restart its packet ids under the same key).

That is what lets the two directions run in two threads without a lock around crypto. The
sending side (`core.Encryptor`) and the receiving side (`core.Decryptor`) each read
`slot.table` once per batch and use that table for the whole batch; all the state they
*write* (packet-id counter, replay windows, counters, the receiver's `slot.proven`) is their
own. The key schedule's writer (the data-channel service, in the trio thread) only ever
rebinds `slot.table`.

Key kinds: AEAD (`AEADKey`: AES-GCM / ChaCha20-Poly1305, reference §6.2) and legacy CBC +
HMAC (`CBCKey`, §6.3) implement the one small `DataKey` protocol: seal a whole batch, and
hand out a per-packet opener. The per-packet loops live inside the implementations (sealing)
or in the decryptor (opening), so the protocol costs one call per batch, never per packet.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from cryptography.exceptions import InvalidTag

from trivpn.controlchannel.packet import Opcode
from trivpn.datachannel.crypto import (
    AEAD,
    OPENVPN_AEAD_TAG_LENGTH,
    PACKET_ID_LEN,
    DataAuthError,
    is_cbc,
    make_cipher,
    normalize_auth_name,
    normalize_data_cipher,
    split_key2,
)
from trivpn.datachannel.framing import Compression, Framer
from trivpn.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.replay import DEFAULT_SEQ_BACKTRACK, DEFAULT_TIME_BACKTRACK
from trivpn.wire import MAX_PEER_ID, P_KEY_ID_MASK, P_OPCODE_SHIFT, PACKET_ID_MAX

if TYPE_CHECKING:  # legacy CBC is imported only when a CBC key is made (start-up time)
    from trivpn.datachannel.cbc import CBCDirection

#: From this id on the key should be renegotiated (`PACKET_ID_WRAP_TRIGGER`).
PACKET_ID_WRAP_TRIGGER = 0xFF000000
#: OpenVPN's upper bound for `--replay-window n` (`MAX_SEQ_BACKTRACK`).
MAX_SEQ_BACKTRACK = 65536
OP_V1 = int(Opcode.DATA_V1)
OP_V2 = int(Opcode.DATA_V2)
V1_HDR_LEN = 1
V2_HDR_LEN = 4
TAG_LEN = OPENVPN_AEAD_TAG_LENGTH

_HDR_PID = struct.Struct(">II")  # V2 header word followed by the packet id: exactly the AD
_pack_hdr_pid = _HDR_PID.pack
_pack_pid = struct.Struct(">I").pack
_unpack_pid_from = struct.Struct(">I").unpack_from

#: Opens one received packet whose body starts at `offset`: (packet id, plaintext). Raises
#: `DataAuthError` for a bad tag/HMAC, `RemoteProtocolError` for a malformed packet.
Opener = Callable[[bytes, int], tuple[int, bytes]]


@dataclass(frozen=True, slots=True)
class DataConfig:
    """What every key of one data channel shares: cipher, role, header and framing."""

    cipher: str
    is_server: bool = False
    peer_id: int | None = None
    compression: Compression = Compression.NONE
    replay_window: int = DEFAULT_SEQ_BACKTRACK
    replay_time: float = DEFAULT_TIME_BACKTRACK
    #: the CBC HMAC digest (normalized), None with an AEAD cipher
    auth: str | None = None

    @classmethod
    def build(
        cls,
        *,
        cipher: str,
        is_server: bool = False,
        peer_id: int | None = None,
        compression: Compression = Compression.NONE,
        replay_window: int = DEFAULT_SEQ_BACKTRACK,
        replay_time: float = DEFAULT_TIME_BACKTRACK,
        auth: str | None = None,
    ) -> DataConfig:
        """Validated settings; a bad one is a one-line `ConfigError`. `auth` is the HMAC
        digest of a CBC cipher (the profile's `auth`); AEAD ciphers ignore it, as OpenVPN does."""
        name = normalize_data_cipher(cipher)
        digest: str | None = None
        if is_cbc(name):
            if auth is None:
                raise ConfigError(
                    f"cipher {name} needs the HMAC digest of the profile's 'auth' option"
                )
            digest = normalize_auth_name(auth)
        if peer_id is not None and not 0 <= peer_id <= MAX_PEER_ID:
            raise ConfigError(f"peer-id {peer_id} is out of range (0..{MAX_PEER_ID})")
        if not 1 <= replay_window <= MAX_SEQ_BACKTRACK:
            raise ConfigError(f"replay-window {replay_window} is out of range (1..65536)")
        if replay_time < 0:
            raise ConfigError(f"replay-window time must not be negative, got {replay_time:g}")
        if not isinstance(compression, Compression):
            raise ConfigError(f"unknown compression framing {compression!r}")
        return cls(name, is_server, peer_id, compression, replay_window, float(replay_time), digest)


class DataKey(Protocol):
    """One installed key, both directions: what AEAD and CBC keys have in common."""

    @property
    def key_id(self) -> int: ...

    def seal_batch(
        self, last_pid: int, payloads: Sequence[bytes], frame: Framer | None
    ) -> tuple[list[bytes], int]:
        """Wire packets for the non-empty `payloads` (ids continue after `last_pid`), and
        the last packet id used. The caller checks that the ids do not run out."""
        ...

    def opener(self) -> Opener:
        """The per-packet open function (fetched once per key install, not per packet)."""
        ...


@dataclass(frozen=True, slots=True, eq=False)  # identity: a re-installed key is a new key
class AEADKey:
    """An AEAD key: "tag first" packets with an implicit IV (reference §6.2)."""

    key_id: int
    hdr: int  # V2 header word, or the V1 header byte
    v2: bool
    enc: AEAD
    enc_iv: bytes
    dec: AEAD
    dec_iv: bytes

    def seal_batch(
        self, last_pid: int, payloads: Sequence[bytes], frame: Framer | None
    ) -> tuple[list[bytes], int]:
        # `cryptography` returns ciphertext || tag; OpenVPN puts the tag first. Measured on
        # this machine, plain bytes concatenation beats encrypt_into with preallocated buffers.
        out: list[bytes] = []
        append = out.append
        enc = self.enc.encrypt
        iv = self.enc_iv
        hdr = self.hdr
        pid = last_pid
        if self.v2:
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
        return out, pid

    def opener(self) -> Opener:
        return self.open

    def open(self, packet: bytes, offset: int) -> tuple[int, bytes]:
        """One packet, for the generic decrypt loop (the AEAD loop inlines this)."""
        tag_at = offset + PACKET_ID_LEN
        ct_at = tag_at + TAG_LEN
        if len(packet) < ct_at:
            raise RemoteProtocolError(f"AEAD packet of {len(packet)} bytes is too short")
        ad_start = 0 if offset == V2_HDR_LEN else offset  # V1: the opcode is not authenticated
        try:
            pt = self.dec.decrypt(
                packet[offset:tag_at] + self.dec_iv,
                packet[ct_at:] + packet[tag_at:ct_at],
                packet[ad_start:tag_at],
            )
        except InvalidTag:
            raise DataAuthError("AEAD tag mismatch") from None
        return _unpack_pid_from(packet, offset)[0], pt


@dataclass(frozen=True, slots=True, eq=False)
class CBCKey:
    """A legacy CBC + HMAC key (reference §6.3); the packet id sits inside the ciphertext."""

    key_id: int
    header: bytes
    enc: CBCDirection
    dec: CBCDirection

    def seal_batch(
        self, last_pid: int, payloads: Sequence[bytes], frame: Framer | None
    ) -> tuple[list[bytes], int]:
        from trivpn.datachannel.cbc import seal_batch  # imported already by make_key

        return seal_batch(self.enc, self.header, last_pid, payloads, frame)

    def opener(self) -> Opener:
        return self.dec.open


def make_key(config: DataConfig, key_id: int, key2: bytes) -> AEADKey | CBCKey:
    """The key for `key_id` from a 256-byte `key2` block, for our side of the connection."""
    if not 0 <= key_id <= P_KEY_ID_MASK:
        raise LocalProtocolError(f"key id {key_id} is out of range (0..7)")
    peer_id = config.peer_id
    if peer_id is not None:
        hdr = ((OP_V2 << P_OPCODE_SHIFT | key_id) << 24) | peer_id
    else:
        hdr = OP_V1 << P_OPCODE_SHIFT | key_id
    if config.auth is not None:
        from trivpn.datachannel.cbc import make_cbc_directions

        enc_c, dec_c = make_cbc_directions(
            key2, config.cipher, config.auth, is_server=config.is_server
        )
        header = hdr.to_bytes(4, "big") if peer_id is not None else bytes((hdr,))
        return CBCKey(key_id, header, enc_c, dec_c)
    tx, rx = split_key2(key2, config.cipher, is_server=config.is_server)
    return AEADKey(
        key_id,
        hdr,
        peer_id is not None,
        make_cipher(config.cipher, tx.cipher_key),
        tx.implicit_iv,
        make_cipher(config.cipher, rx.cipher_key),
        rx.implicit_iv,
    )


@dataclass(frozen=True, slots=True)
class KeyTable:
    """The keys of one moment: immutable, replaced as a whole (see the module docstring)."""

    primary: DataKey | None = None
    lame: DataKey | None = None
    #: key id (0..7) -> key; the primary wins a (theoretical) tie
    by_id: tuple[DataKey | None, ...] = (None,) * (P_KEY_ID_MASK + 1)
    #: installed for receiving only; sealed with once the peer proved it has it
    pending: DataKey | None = None

    @classmethod
    def of(
        cls, primary: DataKey | None, lame: DataKey | None, pending: DataKey | None = None
    ) -> KeyTable:
        table: list[DataKey | None] = [None] * (P_KEY_ID_MASK + 1)
        for key in (lame, pending, primary):
            if key is not None:
                table[key.key_id] = key
        return cls(primary, lame, tuple(table), pending)

    def installed(self, key: DataKey) -> KeyTable:
        """`key` as the new primary; the old primary becomes the lame duck (unless it had the
        same key id: then it is simply replaced). A previous lame duck is dropped; a pending
        key is activated first (it may already be in use), so it becomes the lame duck."""
        base = self.promoted()
        old = base.primary
        return KeyTable.of(key, old if old is not None and old.key_id != key.key_id else None)

    def installed_pending(self, key: DataKey) -> KeyTable:
        """`key` for receiving only, next to the primary; the lame duck is dropped. An older
        pending key is activated first (the sender may already seal with it). Without a
        primary, or with the primary's key id, this is a plain `installed`."""
        base = self.promoted()
        primary = base.primary
        if primary is None or primary.key_id == key.key_id:
            return base.installed(key)
        return KeyTable.of(primary, None, key)

    def activated(self, key_id: int) -> KeyTable:
        """The pending key `key_id` as the primary, the old primary as the lame duck (a stale
        activation changes nothing)."""
        pending = self.pending
        if pending is None or pending.key_id != key_id:
            return self
        return KeyTable.of(pending, self.primary)

    def promoted(self) -> KeyTable:
        """The pending key, if any, activated."""
        return self if self.pending is None else self.activated(self.pending.key_id)

    def retired(self, key_id: int) -> KeyTable:
        """Without the lame duck, if it is `key_id` (a stale retirement changes nothing).
        Retiring the primary while a key is pending activates that key first."""
        if self.pending is not None and self.primary is not None and self.primary.key_id == key_id:
            return self.promoted().retired(key_id)
        if self.lame is None or self.lame.key_id != key_id:
            return self
        return KeyTable.of(self.primary, None, self.pending)


class KeySlot:
    """The mutable references both directions share: the current `KeyTable`, and the proof
    that the peer has the table's pending key.

    `table` has one writer, the key schedule's caller (install, activation, retirement): it
    builds a new table and assigns it here; readers load `table` once per batch. `proven`
    has one writer, the receiving side: once it opened an authentic packet with the pending
    key of the table it holds, it stores that key here; the sending side loads it once per
    batch and seals with `table.pending` when `proven is table.pending`.

    Memory ordering. In CPython an attribute store or load of an object reference is a single
    bytecode and therefore atomic with respect to other threads (the free-threaded build
    keeps reference loads/stores of attributes atomic too), and a table is complete before it
    is published and never changes afterwards: a reader sees either the whole old table or
    the whole new one, never a mixture, and needs no lock. A batch that started with the old
    table finishes with it — harmless, as the lame duck still opens packets of the old key
    and the sender simply switches keys one batch later. `proven` needs no ordering with
    `table` either: keys are compared by identity and never reused (a re-installed key is a
    new object), so a proof only ever matches the pending key it was written for; the
    receiver writes it only after the peer demonstrably sealed with that key, so it is never
    early; a proof the sender sees one batch late only delays the switch by one batch; and a
    proof that arrives after the key stopped being pending (activated, or superseded) is
    simply never matched again.
    """

    __slots__ = ("table", "proven")

    def __init__(self, table: KeyTable | None = None) -> None:
        self.table = table if table is not None else KeyTable()
        self.proven: DataKey | None = None

    def sending_key(self, table: KeyTable) -> DataKey | None:
        """The key to seal with under `table`: the pending key once proven, else the primary."""
        pending = table.pending
        if pending is not None and self.proven is pending:
            return pending
        return table.primary


__all__ = [
    "MAX_PEER_ID",
    "MAX_SEQ_BACKTRACK",
    "PACKET_ID_MAX",
    "PACKET_ID_WRAP_TRIGGER",
    "AEADKey",
    "CBCKey",
    "DataConfig",
    "DataKey",
    "KeySlot",
    "KeyTable",
    "Opener",
    "make_key",
]
