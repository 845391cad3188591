"""Low-latency mode's dummy work (`fastpath`, `trivpn connect --low-latency`).

A private client/server pair of data-channel cores under a random key: sealing and opening a
dummy packet with them runs the same code and touches the same kinds of data as the real
path, so a thread that does it every millisecond finds its next real packet in warm caches.
Nothing here is ever sent, and nothing touches the session's keys or counters.
"""

from __future__ import annotations

import os

from trivpn.datachannel.core import DataChannel
from trivpn.datachannel.keys import DataConfig

#: The dummy payload low-latency mode seals and opens.
WARM_PACKET = bytes(100)
#: Renew the dummy cores long before their packet ids could run out.
WARM_PID_RENEW = 1 << 30


class Warmer:
    """A private client/server pair of data-channel cores under a random key: running them
    keeps the code and data of the real seal/open path in the caches (low-latency mode)."""

    def __init__(self, config: DataConfig) -> None:
        key2 = os.urandom(256)
        pair: list[DataChannel] = []
        for is_server in (config.is_server, not config.is_server):
            core = DataChannel(
                cipher=config.cipher,
                is_server=is_server,
                peer_id=config.peer_id,
                compression=config.compression,
                auth=config.auth,
            )
            core.install_key(0, key2, 0.0)
            pair.append(core)
        self.tx, self.rx = pair
        self.sealed = 0

    def seal(self) -> list[bytes]:
        self.sealed += 1
        return self.tx.encrypt((WARM_PACKET,), 0.0)


__all__ = ["WARM_PACKET", "WARM_PID_RENEW", "Warmer"]
