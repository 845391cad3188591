"""Sans-IO core of OpenVPN's reliability layer for control packets (`reliable.c` semantics).

Theory of operation
-------------------
OpenVPN runs TLS over UDP, so control packets need their own tiny ARQ protocol. Each direction
has a 32-bit *message id* that counts reliable messages; every control packet may also carry
an *ACK array* of up to eight ids the sender has received from its peer.

Send side. `send()` assigns the next id immediately and appends the message to `_unacked`
(a dict keyed by id; ids are inserted in increasing order, so the first key is always the
lowest unacknowledged id). Only ids in ``[lowest_unacked, lowest_unacked + send_window)`` may
be on the wire; later ones wait their turn, exactly like OpenVPN's six send buffers that must
hold consecutive ids. An entry that was never transmitted is due at once; afterwards it is due
at `next_try`, and every transmission sets ``next_try = now + timeout`` then doubles `timeout`
(capped at `max_timeout`; OpenVPN itself has no cap but hand-window bounds it). ACKs remove
entries; an ACK for a *higher* id increments `n_acks` of the lower in-flight entries, and at
three such ACKs the entry is retransmitted early (fast retransmit), after which the count
restarts. `schedule_now()` is OpenVPN's "burst": all in-flight entries become due and their
backoff is reset.

Receive side. ACKs are processed first. Then the message id is checked against the window
``[next_recv_id, next_recv_id + recv_window)``: older or already-buffered ids are duplicates
(not stored, but ACKed again, because our previous ACK was evidently lost); ids beyond the
window are dropped without an ACK so that the peer retransmits later. If all `recv_window`
receive buffers are occupied the packet is ignored entirely, as OpenVPN does. Stored messages
are released strictly in id order through `messages_received()`.

ACK emission. Ids to acknowledge go to `_pending_acks` (at most RELIABLE_ACK_SIZE = 8). When
it is full a new id is not recorded - the message itself is still stored, as in OpenVPN
(`reliable_ack_acknowledge_packet_id` just fails) - so the peer retransmits and the duplicate
gets ACKed once there is room. Every outgoing packet's ACK array is built at the moment it is
produced (so retransmissions carry fresh ACKs): the pending ids first, which then move to the
front of an MRU list of recently ACKed ids, and the array is filled up from that MRU list.
Re-sending old ACKs redundantly is what lets the handshake survive a lost ACK. Message packets
carry at most `piggyback_acks` ids (CONTROL_SEND_ACK_MAX = 4); if ids are still pending after
all due message packets were produced (typically: nothing else to send), bare ACK packets with
up to `ack_packet_acks` ids follow in the same call - OpenVPN's "dedicated ACK", with no
delay timer. Since the caller flushes after every receive, pending ACKs never linger.

The muxer performs the hard-reset exchange (id 0 both ways) itself and then builds this core
with ``next_send_id=1, next_recv_id=1, initial_acks=(0,)``: the ACK of the server's reset id 0
is pending from the start, so the very first packet leaving the core carries it, which the 2.6
server's HMAC-cookie check requires.

Message ids are not allowed to wrap: 2**32 control messages per key never happen in practice.
Untrusted input reaches us already parsed by the codec; nonsense (ACKs for ids never sent,
ids outside uint32, a message id on an ACK opcode) is counted in `stats` and ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from trivpn.errors import ConfigError, LocalProtocolError
from trivpn.records import dataclass
from trivpn.wire import CONTROL_SEND_ACK_MAX, P_ACK_V1, RELIABLE_ACK_SIZE
from trivpn.wire import MAX_UINT32 as MAX_MESSAGE_ID

# RELIABLE_ACK_SIZE, CONTROL_SEND_ACK_MAX and P_ACK_V1 live in trivpn.wire; re-exported here.
__all__ = [
    "CONTROL_SEND_ACK_MAX",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_TIMEOUT",
    "DEFAULT_TLS_TIMEOUT",
    "MAX_MESSAGE_ID",
    "N_ACK_RETRANSMIT",
    "P_ACK_V1",
    "RELIABLE_ACK_SIZE",
    "TLS_RELIABLE_N_REC_BUFFERS",
    "TLS_RELIABLE_N_SEND_BUFFERS",
    "OutgoingPacket",
    "ReliableStats",
    "ReliableTransport",
]

TLS_RELIABLE_N_SEND_BUFFERS = 6
TLS_RELIABLE_N_REC_BUFFERS = 12
N_ACK_RETRANSMIT = 3
DEFAULT_TLS_TIMEOUT = 2.0
DEFAULT_MAX_TIMEOUT = 60.0
DEFAULT_MAX_QUEUE = 256


@dataclass(frozen=True, slots=True)
class OutgoingPacket:
    """One control packet to put on the wire; the caller adds key id, session ids, wrapping."""

    opcode: int  # the reliable message's opcode, or ack_opcode for a bare ACK
    acks: tuple[int, ...]  # ACK array to put on this packet
    message_id: int | None  # None for a bare ACK
    payload: bytes


@dataclass(slots=True)
class ReliableStats:
    """Counters for logs and tests; nothing here influences behaviour."""

    sent: int = 0  # first transmissions of messages
    retransmitted: int = 0  # later transmissions (timer, fast retransmit or burst)
    fast_retransmits: int = 0  # subset of `retransmitted` caused by N_ACK_RETRANSMIT
    received: int = 0  # new messages stored
    delivered: int = 0  # messages handed out by messages_received()
    duplicates: int = 0  # messages already received or buffered (re-ACKed)
    out_of_window: int = 0  # messages beyond the receive window (dropped, not ACKed)
    no_buffer: int = 0  # messages ignored because every receive buffer was in use
    ack_set_full: int = 0  # ids we could not record for ACKing (peer will retransmit)
    acks_received: int = 0  # ACKs that released a message from the send buffer
    duplicate_acks: int = 0  # ACKs for ids that were already acknowledged
    bogus_acks: int = 0  # ACKs for ids never sent / not in flight (ignored)
    malformed: int = 0  # nonsense packet fields (ignored)
    acks_sent: int = 0  # ids put into outgoing ACK arrays (incl. MRU re-ACKs)
    ack_packets_sent: int = 0  # bare ACK packets produced


@dataclass(slots=True)
class _SendEntry:
    """A queued or in-flight outgoing message; `next_try is None` means never transmitted."""

    opcode: int
    payload: bytes
    timeout: float
    next_try: float | None = None
    n_acks: int = 0


class ReliableTransport:
    """Reliability for one key_state's control channel: windows, retransmission, ACKs."""

    __slots__ = (
        "stats",
        "_send_window",
        "_recv_window",
        "_initial_timeout",
        "_max_timeout",
        "_max_queue",
        "_piggyback_acks",
        "_ack_packet_acks",
        "_ack_opcode",
        "_next_send_id",
        "_unacked",
        "_next_recv_id",
        "_recv_buffer",
        "_ready",
        "_pending_acks",
        "_mru",
        "_last_now",
    )

    def __init__(
        self,
        *,
        next_send_id: int = 0,
        next_recv_id: int = 0,
        initial_acks: Iterable[int] = (),
        send_window: int = TLS_RELIABLE_N_SEND_BUFFERS,
        recv_window: int = TLS_RELIABLE_N_REC_BUFFERS,
        initial_timeout: float = DEFAULT_TLS_TIMEOUT,
        max_timeout: float = DEFAULT_MAX_TIMEOUT,
        max_queue: int = DEFAULT_MAX_QUEUE,
        piggyback_acks: int = CONTROL_SEND_ACK_MAX,
        ack_packet_acks: int = RELIABLE_ACK_SIZE,
        ack_opcode: int = P_ACK_V1,
    ) -> None:
        acks = list(dict.fromkeys(initial_acks))
        if not 0 <= next_send_id <= MAX_MESSAGE_ID or not 0 <= next_recv_id <= MAX_MESSAGE_ID:
            raise ConfigError("reliable: next_send_id/next_recv_id must be 32-bit unsigned ids")
        if any(not 0 <= a <= MAX_MESSAGE_ID for a in acks):
            raise ConfigError("reliable: initial_acks must be 32-bit unsigned ids")
        if len(acks) > RELIABLE_ACK_SIZE:
            raise ConfigError(f"reliable: at most {RELIABLE_ACK_SIZE} initial_acks")
        if send_window < 1 or recv_window < 1:
            raise ConfigError("reliable: send_window and recv_window must be at least 1")
        if not 0 < initial_timeout <= max_timeout:
            raise ConfigError("reliable: need 0 < initial_timeout <= max_timeout")
        if max_queue < 1:
            raise ConfigError("reliable: max_queue must be at least 1")
        if not 1 <= piggyback_acks <= RELIABLE_ACK_SIZE:
            raise ConfigError(f"reliable: piggyback_acks must be 1..{RELIABLE_ACK_SIZE}")
        if not 1 <= ack_packet_acks <= RELIABLE_ACK_SIZE:
            raise ConfigError(f"reliable: ack_packet_acks must be 1..{RELIABLE_ACK_SIZE}")
        self.stats = ReliableStats()
        self._send_window = send_window
        self._recv_window = recv_window
        self._initial_timeout = float(initial_timeout)
        self._max_timeout = float(max_timeout)
        self._max_queue = max_queue
        self._piggyback_acks = piggyback_acks
        self._ack_packet_acks = ack_packet_acks
        self._ack_opcode = ack_opcode
        self._next_send_id = next_send_id
        self._unacked: dict[int, _SendEntry] = {}  # id -> entry, ascending ids
        self._next_recv_id = next_recv_id
        self._recv_buffer: dict[int, tuple[int, bytes]] = {}  # out-of-order, id -> message
        self._ready: list[tuple[int, bytes]] = []  # in order, not yet drained
        self._pending_acks: list[int] = acks  # oldest first, no duplicates
        self._mru: list[int] = []  # most recently ACKed first, no duplicates
        self._last_now: float | None = None

    # ------------------------------------------------------------------ sending

    def send(self, opcode: int, payload: bytes) -> int:
        """Queue one reliable message and return its id (ids follow send() order)."""
        if len(self._unacked) >= self._max_queue:
            raise LocalProtocolError(
                f"reliable: send queue full ({self._max_queue} messages unacknowledged)"
            )
        msg_id = self._next_send_id
        if msg_id > MAX_MESSAGE_ID:
            raise LocalProtocolError("reliable: message id space exhausted")
        self._next_send_id = msg_id + 1
        self._unacked[msg_id] = _SendEntry(opcode, bytes(payload), self._initial_timeout)
        return msg_id

    def queue_space(self) -> int:
        """How many more messages send() accepts before raising."""
        return self._max_queue - len(self._unacked)

    @property
    def all_acked(self) -> bool:
        """True when nothing is queued or in flight (every sent message was ACKed)."""
        return not self._unacked

    def _window_limit(self) -> int:
        """First id that may not be on the wire yet."""
        for lowest in self._unacked:
            return lowest + self._send_window
        return self._next_send_id

    # ---------------------------------------------------------------- receiving

    def receive_packet(
        self,
        opcode: int,
        acks: Sequence[int],
        message_id: int | None,
        payload: bytes,
        now: float,
    ) -> None:
        """Feed one codec-validated control packet (ACK array first, then its message)."""
        self._last_now = now
        if acks:
            self._process_acks(acks)
        if opcode == self._ack_opcode or message_id is None:
            if message_id is not None or opcode != self._ack_opcode:
                self.stats.malformed += 1
            return
        self._process_message(opcode, message_id, payload)

    def _process_acks(self, acks: Sequence[int]) -> None:
        unacked = self._unacked
        stats = self.stats
        seen: set[int] = set()
        for ack in acks:
            if ack in seen:
                stats.malformed += 1
                continue
            seen.add(ack)
            entry = unacked.get(ack)
            if entry is not None:
                if entry.next_try is None:
                    stats.bogus_acks += 1  # never transmitted: the peer cannot have it
                    continue
                del unacked[ack]
                stats.acks_received += 1
            elif 0 <= ack < self._next_send_id:
                stats.duplicate_acks += 1  # acknowledged before; still proof of receipt
            else:
                stats.bogus_acks += 1
                continue
            # The peer holds `ack`, so lower in-flight ids may have been lost.
            for lower_id, lower in unacked.items():
                if lower_id >= ack:
                    break
                if lower.next_try is not None:
                    lower.n_acks += 1

    def _process_message(self, opcode: int, message_id: int, payload: bytes) -> None:
        stats = self.stats
        if not 0 <= message_id <= MAX_MESSAGE_ID:
            stats.malformed += 1
            return
        if len(self._recv_buffer) + len(self._ready) >= self._recv_window:
            stats.no_buffer += 1  # OpenVPN: no free receive buffer -> ignore, no ACK
            return
        next_id = self._next_recv_id
        if message_id >= next_id + self._recv_window:
            stats.out_of_window += 1
            return
        if message_id < next_id or message_id in self._recv_buffer:
            stats.duplicates += 1
        else:
            stats.received += 1
            if message_id == next_id:
                ready = self._ready
                ready.append((opcode, payload))
                next_id += 1
                buffered = self._recv_buffer
                while next_id in buffered:
                    ready.append(buffered.pop(next_id))
                    next_id += 1
                self._next_recv_id = next_id
            else:
                self._recv_buffer[message_id] = (opcode, payload)
        pending = self._pending_acks
        if message_id not in pending:
            if len(pending) < RELIABLE_ACK_SIZE:
                pending.append(message_id)
            else:
                stats.ack_set_full += 1

    def messages_received(self) -> list[tuple[int, bytes]]:
        """Drain the in-order messages received so far as (opcode, payload)."""
        ready = self._ready
        if not ready:
            return []
        self._ready = []
        self.stats.delivered += len(ready)
        return ready

    # ----------------------------------------------------------------- emitting

    def _take_acks(self, limit: int) -> tuple[int, ...]:
        """Build one ACK array: pending ids first (moved to the MRU front), then MRU fill."""
        pending = self._pending_acks
        mru = self._mru
        if pending:
            n = min(limit, len(pending))
            taken = pending[:n]
            del pending[:n]
            for ack in taken:
                if ack in mru:
                    mru.remove(ack)
            mru[:0] = taken
            del mru[RELIABLE_ACK_SIZE:]
        if not mru:
            return ()
        acks = tuple(mru[:limit])
        self.stats.acks_sent += len(acks)
        return acks

    def packets_to_send(self, now: float) -> list[OutgoingPacket]:
        """Everything due now: messages (lowest id first), then bare ACKs if still owed."""
        self._last_now = now
        out: list[OutgoingPacket] = []
        limit = self._window_limit()
        stats = self.stats
        max_timeout = self._max_timeout
        for msg_id, entry in self._unacked.items():
            if msg_id >= limit:
                break
            next_try = entry.next_try
            if next_try is None:
                stats.sent += 1
            elif entry.n_acks >= N_ACK_RETRANSMIT:
                stats.retransmitted += 1
                if now < next_try:
                    stats.fast_retransmits += 1
            elif now >= next_try:
                stats.retransmitted += 1
            else:
                continue
            timeout = entry.timeout
            entry.next_try = now + timeout
            entry.timeout = min(timeout * 2.0, max_timeout)
            entry.n_acks = 0
            out.append(
                OutgoingPacket(
                    entry.opcode, self._take_acks(self._piggyback_acks), msg_id, entry.payload
                )
            )
        while self._pending_acks:
            out.append(
                OutgoingPacket(self._ack_opcode, self._take_acks(self._ack_packet_acks), None, b"")
            )
            stats.ack_packets_sent += 1
        return out

    # ------------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        """Earliest moment packets_to_send() has something to do, or None if nothing waits.

        Work that is due already (never-sent window entries, fast retransmits, owed ACKs)
        reports the last `now` we were given, i.e. a deadline in the past.
        """
        due_now = self._last_now if self._last_now is not None else float("-inf")
        if self._pending_acks:
            return due_now
        earliest: float | None = None
        limit = self._window_limit()
        for msg_id, entry in self._unacked.items():
            if msg_id >= limit:
                break
            if entry.next_try is None or entry.n_acks >= N_ACK_RETRANSMIT:
                return due_now
            if earliest is None or entry.next_try < earliest:
                earliest = entry.next_try
        return earliest

    def handle_timer(self, now: float) -> None:
        """Note that time passed; due retransmissions come out of the next packets_to_send().

        Deadlines are compared lazily against `now` in packets_to_send(), so there is nothing
        to mutate here beyond remembering the time.
        """
        self._last_now = now

    def schedule_now(self, now: float) -> None:
        """OpenVPN's burst: every in-flight message is due now, with backoff reset."""
        self._last_now = now
        limit = self._window_limit()
        for msg_id, entry in self._unacked.items():
            if msg_id >= limit:
                break
            if entry.next_try is not None:
                entry.next_try = now
                entry.timeout = self._initial_timeout
