"""The state a data-channel service shares with its data plane (see `datachannel.plane`).

Every attribute has exactly one writer: the service writes what it publishes (`tx`, `rx`)
and what it requests (pings, exit notifications); the sending side writes what it sealed
and what it dropped; the receiving side what it dropped. Readers in another thread see each
int or reference whole (CPython loads and stores them atomically), so no lock is needed.
"""

from __future__ import annotations

from collections.abc import Callable

from trivpn.datachannel.receiver import Decryptor
from trivpn.datachannel.sender import Encryptor

#: The error a peer's OCC EXIT ends the session with (either plane).
PEER_EXITED = "the server is shutting down (it sent an exit notification)"


class DataLink:
    """What a data-channel service shares with its data plane (one writer per attribute)."""

    __slots__ = (
        "clock",
        "tx",
        "rx",
        "requests",
        "pings_wanted",
        "exits_wanted",
        "pings_sealed",
        "exits_sealed",
        "dropped_up",
        "dropped_down",
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        #: the one clock every `now` comes from, in the trio thread and in data-plane threads
        self.clock = clock
        # written by the service
        self.tx: Encryptor | None = None
        self.rx: Decryptor | None = None
        self.requests = 0  # bumped after each change of the two below
        self.pings_wanted = 0
        self.exits_wanted = 0
        # written by the sending side
        self.pings_sealed = 0
        self.exits_sealed = 0
        self.dropped_down = 0  # TUN packets that arrived before the first key
        # written by the receiving side
        self.dropped_up = 0  # data packets that arrived before the first key

    def rx_or_drop(self, count: int) -> Decryptor | None:
        """The receive key, or None after counting `count` data packets that arrived before
        the first key (receiving side): one place for the drop and its counter."""
        rx = self.rx
        if rx is None:
            self.dropped_up += count
        return rx

    def tx_or_drop(self, count: int) -> Encryptor | None:
        """The send key, or None after counting `count` TUN packets read before the first key
        (sending side)."""
        tx = self.tx
        if tx is None:
            self.dropped_down += count
        return tx

    def requested_packets(self, tx: Encryptor, now: float) -> list[bytes]:
        """Seal the pings and exit notifications asked for since the last call (sending side)."""
        out: list[bytes] = []
        pings = self.pings_wanted - self.pings_sealed
        if pings > 0:
            out += tx.pings(pings, now)
            self.pings_sealed += pings
        exits = self.exits_wanted - self.exits_sealed
        if exits > 0:
            out += tx.exits(exits, now)
            self.exits_sealed += exits
        return out


__all__ = ["PEER_EXITED", "DataLink"]
