"""The sending direction of a data channel (`Encryptor`), free of IO and clocks.

See `trivpn.datachannel.core` for the theory of operation. The `Encryptor` seals with the
sending key of the current `keys.KeyTable` (its primary, or its pending key once the peer
proved it has it: `keys.KeySlot.sending_key`); it owns the packet-id counter (restarting at 1
whenever the sending key changes), the tx counters and `last_sent`, and is called by exactly
one thread or task: the data plane's sending side.
"""

from __future__ import annotations

from collections.abc import Sequence

from trivpn.datachannel.framing import FRAMING, OCC_EXIT, OCC_MAGIC, PING_MAGIC, Framer, framed
from trivpn.datachannel.keys import (
    PACKET_ID_MAX,
    PACKET_ID_WRAP_TRIGGER,
    DataConfig,
    DataKey,
    KeySlot,
)
from trivpn.errors import LocalProtocolError
from trivpn.records import dataclass


@dataclass(slots=True)
class TxStats:
    """Counters of the sending direction; `tx_bytes` counts IP payload bytes."""

    tx_packets: int = 0
    tx_bytes: int = 0
    tx_pings: int = 0
    tx_occ: int = 0
    #: packets not sent because the sending key ran out of packet ids (until the next key)
    drop_no_packet_id: int = 0


class Encryptor:
    """The sending direction. Only the one thread or task that sends calls its methods."""

    __slots__ = (
        "config",
        "stats",
        "last_sent",
        "_slot",
        "_frame",
        "_ping",
        "_exit",
        "_key",
        "_pid",
        "_base",
    )

    def __init__(self, config: DataConfig, slot: KeySlot) -> None:
        self.config = config
        self.stats = TxStats()
        #: when we last sealed anything (the `now` of that call)
        self.last_sent = 0.0
        self._slot = slot
        self._frame = FRAMING[config.compression][0]
        self._ping = framed(config.compression, PING_MAGIC)
        self._exit = framed(config.compression, OCC_MAGIC + bytes([OCC_EXIT]))
        self._key: DataKey | None = None  # the key we last sealed with ...
        self._pid = 0  # ... and the last packet id used with it (the first packet carries 1)
        #: (key, tx_bytes, tx_packets) when that key was first used: one tuple, replaced whole,
        #: so `usage_of` (another thread) never pairs a key with another key's base
        self._base: tuple[DataKey | None, int, int] = (None, 0, 0)

    def _seal(self, payloads: Sequence[bytes], frame: Framer | None) -> list[bytes]:
        slot = self._slot
        table = slot.table  # one table (and one proof) for the whole batch
        key = table.primary
        pending = table.pending
        if pending is not None and slot.proven is pending:  # `KeySlot.sending_key`, inlined
            key = pending
        if key is None:
            raise LocalProtocolError("no data-channel key is installed")
        if key is not self._key:  # a new sending key: packet ids restart
            self._key = key
            self._pid = 0
            self._base = (key, self.stats.tx_bytes, self.stats.tx_packets)
        pid = self._pid
        if pid + len(payloads) > PACKET_ID_MAX:
            # OpenVPN drops too: the renegotiation near_wrap asked for brings a fresh key; a
            # session is never ended for it (an error here would end the run)
            self.stats.drop_no_packet_id += len(payloads)
            return []
        out, self._pid = key.seal_batch(pid, payloads, frame)
        return out

    def encrypt(self, ip_packets: Sequence[bytes], now: float) -> list[bytes]:
        """Wire packets for a batch of IP packets (empty packets are skipped)."""
        out = self._seal(ip_packets, self._frame)
        if out:
            stats = self.stats
            stats.tx_packets += len(out)
            stats.tx_bytes += sum(map(len, ip_packets))
            self.last_sent = now
        return out

    def pings(self, count: int, now: float) -> list[bytes]:
        """`count` encrypted keepalive pings."""
        out = self._seal((self._ping,) * count, None)
        self.stats.tx_pings += len(out)
        self.last_sent = now
        return out

    def exits(self, count: int, now: float) -> list[bytes]:
        """`count` encrypted OCC EXIT messages (explicit-exit-notify without cc-exit)."""
        out = self._seal((self._exit,) * count, None)
        self.stats.tx_occ += len(out)
        self.last_sent = now
        return out

    @property
    def near_wrap(self) -> bool:
        """True once the sending key's packet ids approach wrapping (renegotiate then)."""
        slot = self._slot
        return self._key is slot.sending_key(slot.table) and self._pid >= PACKET_ID_WRAP_TRIGGER

    def usage_of(self, key: DataKey) -> tuple[int, int, bool]:
        """(bytes, packets, near wrap) sent with `key`; safe to call from another thread."""
        used, base_bytes, base_packets = self._base
        if used is not key:
            return 0, 0, False  # nothing sealed with it yet
        stats = self.stats
        return (
            stats.tx_bytes - base_bytes,
            stats.tx_packets - base_packets,
            self._pid >= PACKET_ID_WRAP_TRIGGER,
        )


__all__ = ["Encryptor", "TxStats"]
