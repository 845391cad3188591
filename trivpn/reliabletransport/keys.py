"""The reliable layer's key lifecycle: one `ReliableTransport` core per key id (sans-IO).

Theory of operation
-------------------
Each key id (0 after the hard reset, then 1..7 for renegotiations) has its own reliable
sequence: message ids restart with the soft reset that opens the key. `ReliableKeys` owns
those cores and decides when one is created and dropped, so the trio service only moves
items:

* key 0 is created when the muxer reports the finished reset exchange (`open_first`), with
  the role's start state (`after_hard_reset`);
* a key is opened by whichever soft reset comes first: the peer's P_CONTROL_SOFT_RESET_V1
  (a packet for an unknown key id that is not a soft reset is dropped and counted) or our
  own. When the peer's reset opened it, our answering reset must go into the *same* core
  (it is message 0 of our direction of that key), so opening remembers who opened it;
* at most two keys are kept: the one being negotiated and the one carrying data. An older
  core could only re-ACK packets of a key that no longer carries data.

Time enters only as `now`; outputs are typed items (`ControlOut` down, `ReliableMessage`
up) that the service forwards unchanged.
"""

from __future__ import annotations

from trivpn.controlchannel.packet import ControlPacket
from trivpn.messages import ControlOut, ReliableMessage
from trivpn.reliabletransport.core import ReliableTransport
from trivpn.wire import Opcode

#: The negotiating key and the key in use.
MAX_KEYS = 2


def after_hard_reset(is_server: bool = False) -> ReliableTransport:
    """Key 0 after the muxer's reset exchange: message id 0 is used in both directions.

    The client still owes the ACK of the server's reset (a 2.6 server creates its state only
    when that ACK comes back with the cookie). The server owes nothing: its reset already
    carried the ACK of the client's 0, and the muxer answers every repeat of the client's
    reset, so the server core starts with no ACK pending.
    """
    return ReliableTransport(next_send_id=1, next_recv_id=1, initial_acks=() if is_server else (0,))


class ReliableKeys:
    """Every key id's reliable core, created and retired by the soft-reset rules above."""

    def __init__(self, *, is_server: bool = False) -> None:
        self.is_server = is_server
        self.cores: dict[int, ReliableTransport] = {}
        #: packets/messages for a key id that has no core (and is not being opened)
        self.dropped_unknown_key = 0
        #: keys whose core the peer's soft reset created (our reply must reuse it)
        self._peer_opened: set[int] = set()

    def open_first(self, core: ReliableTransport | None = None) -> None:
        """Key 0, once the reset exchange finished (`core` overrides the role's default)."""
        self.cores[0] = core if core is not None else after_hard_reset(self.is_server)

    def _new_key(self, key_id: int) -> ReliableTransport:
        """A fresh core for a renegotiation: message ids restart at 0 with the soft reset."""
        self.cores.pop(key_id, None)
        while len(self.cores) >= MAX_KEYS:
            self.cores.pop(next(iter(self.cores)))
        core = ReliableTransport()
        self.cores[key_id] = core
        return core

    # -- from the peer ------------------------------------------------------------------

    def receive_packet(self, pkt: ControlPacket, now: float) -> None:
        """One authentic control packet of this session (the muxer checked it)."""
        core = self.cores.get(pkt.key_id)
        if core is None:
            if pkt.opcode != Opcode.CONTROL_SOFT_RESET_V1:
                self.dropped_unknown_key += 1
                return
            core = self._new_key(pkt.key_id)
            self._peer_opened.add(pkt.key_id)
        core.receive_packet(pkt.opcode, pkt.acks, pkt.message_id, pkt.payload, now)

    def messages_received(self) -> list[ReliableMessage]:
        """In-order messages of every key, ready for the control channel."""
        out: list[ReliableMessage] = []
        for kid, core in self.cores.items():
            for op, payload in core.messages_received():
                out.append(ReliableMessage(kid, op, payload))
        return out

    # -- from the control channel ---------------------------------------------------------

    def send(self, msg: ReliableMessage) -> None:
        """Queue one message; our soft reset opens its key unless the peer's already did."""
        core = self.cores.get(msg.key_id)
        if msg.opcode == Opcode.CONTROL_SOFT_RESET_V1:
            if msg.key_id not in self._peer_opened:
                core = self._new_key(msg.key_id)
            self._peer_opened.discard(msg.key_id)
        if core is None:
            self.dropped_unknown_key += 1
            return
        core.send(msg.opcode, msg.payload)

    # -- output and time ------------------------------------------------------------------

    def packets_to_send(self, now: float) -> list[ControlOut]:
        """Packets due now (new messages, ACKs, retransmissions), grouped per key id."""
        out: list[ControlOut] = []
        for kid, core in self.cores.items():
            pkts = core.packets_to_send(now)
            if pkts:
                out.append(ControlOut(kid, pkts))
        return out

    def get_timer(self) -> float | None:
        timers = [t for c in self.cores.values() if (t := c.get_timer()) is not None]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        for core in self.cores.values():
            core.handle_timer(now)
