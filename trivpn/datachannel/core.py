"""Sans-IO core of the data channel: one object per direction, sharing an immutable key table.

This module holds the one-object view (`DataChannel`) and the counters snapshot; the
directions live in `sender` (`Encryptor`) and `receiver` (`Decryptor`), the keys and the key
table in `keys`, the keepalive timers in `keepalive`, the framing in `framing`.

Theory of operation
-------------------
Wire layout of one AEAD data packet (reference §6.2, OpenVPN 2.6 "tag first" format)::

    P_DATA_V2: [op|kid, peer-id (3)] [packet id (4)] [tag (16)] [ciphertext]
    P_DATA_V1: [op|kid]              [packet id (4)] [tag (16)] [ciphertext]

    nonce = packet id (4) || implicit IV (8)
    AD    = header || packet id  (V2)      packet id alone (V1: the opcode is unauthenticated)

Legacy CBC packets (§6.3) carry the packet id inside the ciphertext; `keys.CBCKey` seals
them, and the decryptor's generic loop opens them (HMAC, decryption, then the replay check).

The two directions are separate objects so that each can run in its own thread (the
data-plane threads of `fastpath`) without a lock around crypto:

* `Encryptor` (sending) seals with the sending key of the current `keys.KeyTable` (the
  primary, or a receive-only pending key once the peer proved it has it). It owns the
  packet-id counter (restarting at 1 whenever the sending key changes), the tx counters and
  `last_sent`.
* `Decryptor` (receiving) picks each packet's key by the key id in its first byte (primary,
  lame duck or pending key, anything else is `drop_no_key`). It owns one replay window per
  key (updated only after the tag checked), the rx counters, `last_received`, `peer_exited`
  and the proof that the peer has the pending key (`keys.KeySlot.proven`).

The only thing one writes and the other reads is that proof; both read the `keys.KeySlot`
once per batch (see `keys.KeySlot` for why that needs no lock). Each is written by exactly
one thread or task.

The plaintext is `[compression framing] || payload` (§6.4, `framing`). Pings are consumed;
OCC EXIT sets `peer_exited`. Nothing received is ever raised: each bad packet is dropped and
counted. Counters are accumulated in locals and written once per batch to keep loops lean.

`DataChannel` bundles both directions, the key slot and a `keepalive.Keepalive` into the one
object single-threaded users (tests, fuzzers, tools) want.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

from trivpn.datachannel.framing import OCC_EXIT, OCC_MAGIC, PING_MAGIC, Compression
from trivpn.datachannel.keepalive import Keepalive, SendPing
from trivpn.datachannel.keys import (
    PACKET_ID_MAX,
    PACKET_ID_WRAP_TRIGGER,
    DataConfig,
    KeySlot,
    make_key,
)
from trivpn.datachannel.receiver import Decryptor, RxStats
from trivpn.datachannel.sender import Encryptor, TxStats
from trivpn.messages import KeyUsage
from trivpn.records import dataclass
from trivpn.replay import DEFAULT_SEQ_BACKTRACK, DEFAULT_TIME_BACKTRACK


@dataclass(slots=True)
class DataStats:
    """A snapshot of both directions' counters (for logs and tests; read, never written)."""

    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    tx_pings: int = 0
    rx_pings: int = 0
    tx_occ: int = 0
    drop_no_packet_id: int = 0
    rx_occ: int = 0
    rx_empty: int = 0
    drop_malformed: int = 0
    drop_auth: int = 0
    drop_replay: int = 0
    drop_no_key: int = 0
    drop_compression: int = 0

    @classmethod
    def of(cls, tx: TxStats, rx: RxStats) -> DataStats:
        """Copy both counter sets (each int read is atomic; the set is near-consistent)."""
        values = {f.name: getattr(tx, f.name) for f in fields(tx)}
        values.update({f.name: getattr(rx, f.name) for f in fields(rx)})
        return cls(**values)


class DataChannel:
    """Both directions, the key slot and the keepalive core of one session, in one object.

    For single-threaded users. A session service hands `tx` and `rx` to its data plane (two
    threads may run them) and drives `keepalive` itself; it calls nothing here that seals.
    """

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
        ping_restart: float = 0.0,
        ping_exit: float = 0.0,
    ) -> None:
        """`auth` is the HMAC digest of a CBC cipher (the profile's `auth`, e.g. SHA256);
        AEAD ciphers ignore it, as OpenVPN does."""
        self.config = DataConfig.build(
            cipher=cipher,
            is_server=is_server,
            peer_id=peer_id,
            compression=compression,
            replay_window=replay_window,
            replay_time=replay_time,
            auth=auth,
        )
        self.keepalive = Keepalive(
            ping_interval=ping_interval, ping_restart=ping_restart, ping_exit=ping_exit
        )
        self.slot = KeySlot()
        self.tx = Encryptor(self.config, self.slot)
        self.rx = Decryptor(self.config, self.slot)

    # -- settings ---------------------------------------------------------------------------

    @property
    def cipher(self) -> str:
        return self.config.cipher

    @property
    def auth(self) -> str | None:
        """The CBC HMAC digest, or None with an AEAD cipher."""
        return self.config.auth

    @property
    def is_server(self) -> bool:
        return self.config.is_server

    @property
    def peer_id(self) -> int | None:
        return self.config.peer_id

    @property
    def compression(self) -> Compression:
        return self.config.compression

    @property
    def ping_interval(self) -> float:
        return self.keepalive.ping_interval

    # -- keys (any thread may read; only the key schedule's caller writes) --------------------

    def install_key(self, key_id: int, key2: bytes, now: float, *, send_now: bool = True) -> None:
        """Make `key2` the sending key; the previous primary is kept for decryption only.

        With `send_now=False` the key opens packets at once but is sealed with only once the
        peer proved it has it, or after `activate_key` (receive early, send late)."""
        key = make_key(self.config, key_id, key2)
        table = self.slot.table
        # one atomic swap (see keys.KeySlot)
        self.slot.table = table.installed(key) if send_now else table.installed_pending(key)
        self.keepalive.key_installed(now)

    def activate_key(self, key_id: int) -> None:
        """Seal with the pending key `key_id` from now on, proven or not (a stale id is ignored)."""
        self.slot.table = self.slot.table.activated(key_id)

    def retire_key(self, key_id: int) -> None:
        """Stop decrypting with lame-duck key `key_id` (its transition window is over).
        Retiring the primary while a key is pending activates that key first."""
        self.slot.table = self.slot.table.retired(key_id)

    def retire_lame_duck(self) -> None:
        """Forget the previous key, whatever its id."""
        lame = self.slot.table.lame
        if lame is not None:
            self.retire_key(lame.key_id)

    @property
    def ready(self) -> bool:
        """True once a key is installed (we can encrypt)."""
        return self.slot.table.primary is not None

    @property
    def primary_key_id(self) -> int | None:
        key = self.slot.table.primary
        return None if key is None else key.key_id

    @property
    def lame_duck_key_id(self) -> int | None:
        key = self.slot.table.lame
        return None if key is None else key.key_id

    @property
    def pending_key_id(self) -> int | None:
        """The receive-only key, if one is installed (whether or not the sender uses it yet)."""
        key = self.slot.table.pending
        return None if key is None else key.key_id

    @property
    def sending_key_id(self) -> int | None:
        """The key the next batch is sealed with."""
        key = self.slot.sending_key(self.slot.table)
        return None if key is None else key.key_id

    @property
    def needs_renegotiation(self) -> bool:
        """True once the sending key's packet ids approach wrapping (OpenVPN soft-resets)."""
        return self.tx.near_wrap

    def usage(self) -> KeyUsage:
        """What the sending key carried so far, both directions (polled by the key schedule)."""
        key = self.slot.sending_key(self.slot.table)
        if key is None:
            return KeyUsage(None)
        tx_bytes, tx_packets, near_wrap = self.tx.usage_of(key)
        rx_bytes, rx_packets = self.rx.usage_of(key)
        return KeyUsage(key.key_id, tx_bytes + rx_bytes, tx_packets + rx_packets, near_wrap)

    # -- both directions --------------------------------------------------------------------

    def encrypt(self, ip_packets: Sequence[bytes], now: float) -> list[bytes]:
        return self.tx.encrypt(ip_packets, now)

    def exit_packet(self, now: float) -> bytes | None:
        """One encrypted OCC EXIT (explicit-exit-notify when cc-exit is not negotiated);
        None when the key has no packet id left."""
        out = self.tx.exits(1, now)
        return out[0] if out else None

    def decrypt(self, wire_packets: Sequence[bytes], now: float) -> list[bytes]:
        return self.rx.decrypt(wire_packets, now)

    @property
    def stats(self) -> DataStats:
        return DataStats.of(self.tx.stats, self.rx.stats)

    @property
    def last_received(self) -> float:
        return self.rx.last_received

    @property
    def peer_exited(self) -> bool:
        return self.rx.peer_exited

    # -- keepalive, single-threaded ---------------------------------------------------------

    def _observe(self) -> None:
        self.keepalive.observe(last_sent=self.tx.last_sent, last_received=self.rx.last_received)

    def get_timer(self) -> float | None:
        """When the keepalive core next wants to be woken (None: pings off or no key)."""
        self._observe()
        return self.keepalive.get_timer()

    def handle_timer(self, now: float) -> None:
        self._observe()
        self.keepalive.handle_timer(now)

    def packets_to_send(self, now: float) -> list[bytes]:
        """Encrypted keepalive pings that are due now (at most one)."""
        self.handle_timer(now)
        due = sum(isinstance(ev, SendPing) for ev in self.keepalive.events())
        return self.tx.pings(due, now) if due else []


__all__ = [
    "OCC_EXIT",
    "OCC_MAGIC",
    "PACKET_ID_MAX",
    "PACKET_ID_WRAP_TRIGGER",
    "PING_MAGIC",
    "Compression",
    "DataChannel",
    "DataStats",
    "Decryptor",
    "Encryptor",
    "RxStats",
    "TxStats",
]
