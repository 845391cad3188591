"""The UDP external multiplexer of a server: which session a datagram belongs to.

Theory of operation
-------------------
One UDP socket (or several, if the caller puts the listener into the address tuple) feeds
every datagram here with its source address. The answer is a list of typed actions:
`Reply` (send these bytes back, nothing else happens), `NewSession` (start a per-client
stack and give it `first_packet`), `Deliver` (hand datagrams to an existing session).
Everything refused is only counted, by `DropReason`, so a flood produces no output at all.

Lookup (reference openvpn-server.md §1.1): a P_DATA_V2 of at least 4 bytes whose peer-id is
not 0xFFFFFF goes to the session holding that peer-id, or is dropped; a source address that
differs from the session's is a *float candidate*: delivered, flagged, and committed only
when the session has authenticated the packet and calls `confirm_float`. A session's own
control packet (CONTROL_V1, ACK_V1, WKC_V1, SOFT_RESET_V1 carrying its client session id)
from an address with no session is a float candidate the same way. Every other packet
goes to the session of its source address, except a permitted first packet (below) with
another client session id than that session's: a client restarted on the same port, which
gets the cookie handshake and, when its cookie returns, a session that `replaces` the old.

A source with no session gets the stateless HMAC-cookie handshake (§1.3). The first-packet
filter lets through only HARD_RESET_CLIENT_V2/V3, CONTROL_V1, CONTROL_WKC_V1 and ACK_V1 with
key id 0, a non-zero session id, and a valid tls-auth/tls-crypt wrap. A RESET_V2 is answered,
within the `connect-freq-initial` budget, by HARD_RESET_SERVER_V2 whose session id is the
cookie: the first 8 bytes of HMAC-SHA256(process key, time slot | client address | client
session id), slot = now // ((hand_window + 1) // 2). Nothing is stored. The client's next
CONTROL_V1 / ACK_V1 echoes the cookie after its ACKs; it is accepted for slot offsets
-2..+1, with every ACKed id and the message id at most 1 (Debian deb12u2), from the very
address the cookie was made for. Only then is state created, subject to `connect-freq`
(new sessions per window, every listener's together: `ConnectFreq`), to `max_clients`
(unauthenticated sessions count; with several listeners, their sessions together through
one shared `SessionSlots`) and with the lowest free peer-id.

tls-crypt-v2 (`tls_crypt_v2` given; reference openvpn-protocol.md §7.3): every first packet
must then be a RESET_V3 or WKC_V1 carrying the client's wrapped key (WKc) after the packet;
anything else is dropped. The WKc is opened with the server key (wrapv2.py, pure) and the
packet authenticated with the client key Kc inside it; a short, mis-sized or forged WKc is
dropped and counted (`BAD_CLIENT_KEY`) before any other work. A RESET_V3 whose replay
packet-id has the top byte 0x0f (EARLY_NEG_START) gets the same stateless reply, plus the
TLV EARLY_NEG_FLAGS=RESEND_WKC, so the client sends the WKc again with its message id 1
(P_CONTROL_WKC_V1); that packet is checked like a returning CONTROL_V1, and its NewSession
carries a wrap keyed by that Kc, Kc itself (for dyn-tls-crypt) and the WKc (which the
session strips off retransmissions). A RESET_V3 without early negotiation (clients before
2.6) would need state at once; trivpn serves them as OpenVPN's `force-cookie` does: dropped
and counted (`NO_EARLY_NEGOTIATION`).

Memory: before a valid cookie returns, the only state a packet can touch is the O(1) rate
limiter and one reusable verifier wrap; tables are bounded by `max_clients`. Time comes in
as `now` (seconds, any monotonic origin); the cookie key is injected.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import secrets
import struct
from collections.abc import Iterable

from trivpn.controlchannel.packet import (
    ControlPacket,
    parse_control_packet,
    serialize_control_packet,
)
from trivpn.controlchannel.wrap import TLS_CRYPT_OFF_PID, ControlWrap
from trivpn.controlchannel.wrapv2 import TLSCryptV2Server, split_wkc
from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.server.demux_types import (
    Address,
    ConnectFreq,
    Deliver,
    DemuxAction,
    DemuxConfig,
    DemuxStats,
    DropReason,
    NewSession,
    Reply,
    ResetRateLimit,
    SessionSlots,
    WrapFactory,
)
from trivpn.wire import (
    DATA_OPCODES,
    MAX_PEER_ID,
    MAX_UINT32,
    P_ACK_V1,
    P_CONTROL_HARD_RESET_CLIENT_V2,
    P_CONTROL_HARD_RESET_CLIENT_V3,
    P_CONTROL_SOFT_RESET_V1,
    P_CONTROL_V1,
    P_CONTROL_WKC_V1,
    P_DATA_V2,
    P_KEY_ID_MASK,
    P_OPCODE_SHIFT,
    SESSION_ID_LEN,
    Opcode,
)

#: Length of the process key for the cookie HMAC (SHA-256 block-sized keys gain nothing).
COOKIE_KEY_LEN = 32
#: Slot offsets a returning cookie may have been made in (`check_session_id_hmac`).
COOKIE_SLOT_OFFSETS = (0, -1, -2, 1)
#: Highest message id / ACKed id a cookie-carrying packet may use (Debian deb12u2).
MAX_COOKIE_MESSAGE_ID = 1

_FIRST_OPCODES = frozenset(
    {
        P_CONTROL_HARD_RESET_CLIENT_V2,
        P_CONTROL_HARD_RESET_CLIENT_V3,
        P_CONTROL_V1,
        P_CONTROL_WKC_V1,
        P_ACK_V1,
    }
)
_V2_ONLY = frozenset({P_CONTROL_HARD_RESET_CLIENT_V3, P_CONTROL_WKC_V1})
#: a session's own control packets (not its resets) reach it from a new address by its
#: client session id, as float candidates
_FLOAT_OPCODES = frozenset({P_CONTROL_V1, P_ACK_V1, P_CONTROL_WKC_V1, P_CONTROL_SOFT_RESET_V1})
_U32 = struct.Struct("!I")
#: The server reset's payload for an early-negotiating tls-crypt-v2 client: the TLV
#: EARLY_NEG_FLAGS (type 1, length 2) with the flag RESEND_WKC (1).
EARLY_NEG_RESEND_WKC = bytes.fromhex("000100020001")
#: Top byte of a replay packet-id that announces early negotiation (EARLY_NEG_START).
EARLY_NEG_MARK = 0x0F

__all__ = [
    "Address",
    "ConnectFreq",
    "Deliver",
    "DemuxAction",
    "DemuxConfig",
    "DemuxStats",
    "DropReason",
    "NewSession",
    "Reply",
    "ResetRateLimit",
    "ServerDemux",
    "SessionSlots",
    "WrapFactory",
    "random_cookie_key",
]


def random_cookie_key() -> bytes:
    """A fresh per-process cookie key (for the service; tests inject their own)."""
    return secrets.token_bytes(COOKIE_KEY_LEN)


@dataclass(frozen=True, slots=True)
class _FirstKeys:
    """How one first packet was authenticated: the wraps to answer with and, for
    tls-crypt-v2, the client's key and WKc."""

    wraps: WrapFactory
    client_key: bytes | None = None
    wkc: bytes | None = None


@dataclass(slots=True)
class _Session:
    session: int
    peer_id: int
    addr: Address
    client_sid: bytes  # empty for stream sessions


class ServerDemux:
    """Routes a server's UDP datagrams to sessions; creates them via the HMAC cookie."""

    def __init__(
        self,
        wrap_factory: WrapFactory,
        *,
        cookie_key: bytes,
        config: DemuxConfig | None = None,
        tls_crypt_v2: TLSCryptV2Server | None = None,
        slots: SessionSlots | None = None,
        reset_rate: ResetRateLimit | None = None,
        connect_freq: ConnectFreq | None = None,
    ) -> None:
        """`tls_crypt_v2`: serve tls-crypt-v2 clients only (then `wrap_factory` is unused);
        `slots` (max-clients), `reset_rate` (connect-freq-initial) and `connect_freq`:
        shared with the server's other listeners, as these limits are the server's (else
        this one's own)."""
        if len(cookie_key) < 16:
            raise ConfigError("the cookie key must be at least 16 bytes")
        self.config = config or DemuxConfig()
        self._wrap_factory = wrap_factory
        self._static = _FirstKeys(wrap_factory)
        self._v2 = tls_crypt_v2
        self._cookie_mac = hmac.new(cookie_key, digestmod=hashlib.sha256)
        self._slot_len = (self.config.hand_window + 1) // 2
        self._slots = slots if slots is not None else SessionSlots(self.config.max_clients)
        self._rate = reset_rate if reset_rate is not None else ResetRateLimit(
            self.config.connect_freq_initial, self.config.connect_freq_initial_period
        )
        self._new_rate = connect_freq if connect_freq is not None else ConnectFreq(
            self.config.connect_freq, self.config.connect_freq_period
        )
        #: a wrap used only to authenticate first packets; replaced once it has accepted
        #: one (its replay state then holds that packet id), kept while it refuses forgeries
        self._verifier: ControlWrap | None = None
        self._by_addr: dict[Address, _Session] = {}
        self._by_peer: dict[int, _Session] = {}
        self._by_id: dict[int, _Session] = {}
        self._by_sid: dict[bytes, _Session] = {}  # UDP sessions by the client's session id
        self._free_peer_ids: list[int] = []  # heap of released ids below _next_peer_id
        self._next_peer_id = 0
        self._next_session = 0
        self.accepting = True
        self.stats = DemuxStats()

    # -- queries -----------------------------------------------------------------------
    @property
    def session_count(self) -> int:
        return len(self._by_id)

    def session_for_addr(self, addr: Address) -> int | None:
        s = self._by_addr.get(addr)
        return None if s is None else s.session

    def session_info(self, session: int) -> tuple[int, Address] | None:
        """(peer_id, current address) of a session, None if it is unknown."""
        s = self._by_id.get(session)
        return None if s is None else (s.peer_id, s.addr)

    def table_sizes(self) -> tuple[int, int, int, int]:
        """Sizes of every per-client structure (for the bounded-memory tests; the session-id
        table is never larger than the address table's sessions)."""
        assert len(self._by_sid) <= len(self._by_id)
        return len(self._by_addr), len(self._by_peer), len(self._by_id), len(self._free_peer_ids)

    # -- incoming ----------------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> list[DemuxAction]:
        out: list[DemuxAction] = []
        self._route(data, addr, now, out)
        return out

    def receive_datagrams(
        self, batch: Iterable[tuple[bytes, Address]], now: float
    ) -> list[DemuxAction]:
        """A batch; consecutive datagrams for one session from one address share a Deliver."""
        out: list[DemuxAction] = []
        for data, addr in batch:
            self._route(data, addr, now, out)
        return out

    def _route(self, data: bytes, addr: Address, now: float, out: list[DemuxAction]) -> None:
        if not data:
            self._drop(DropReason.EMPTY)
            return
        op = data[0] >> P_OPCODE_SHIFT
        if op == P_DATA_V2 and len(data) >= 4:
            peer_id = int.from_bytes(data[1:4], "big")
            if peer_id != MAX_PEER_ID:
                s = self._by_peer.get(peer_id)
                if s is None:
                    self._drop(DropReason.UNKNOWN_PEER_ID)
                else:
                    self._deliver(s, data, addr, out)
                return
        s = self._by_addr.get(addr)
        if s is None:
            if op in DATA_OPCODES:
                self._drop(DropReason.NO_SESSION)
            elif op in _FLOAT_OPCODES and (t := self._by_sid.get(bytes(data[1:9]))) is not None:
                self._deliver(t, data, addr, out)  # a client's control packet from a new address
            else:
                self._first_packet(bytes(data), addr, now, out, None)
        elif (
            op in _FIRST_OPCODES
            and len(data) >= 1 + SESSION_ID_LEN
            and not data[0] & P_KEY_ID_MASK
            and data[1 : 1 + SESSION_ID_LEN] != s.client_sid
        ):
            # a new client session from a known address (a client restarted on the same
            # port): the old session would refuse it; the cookie handshake may replace it
            self._first_packet(bytes(data), addr, now, out, s)
        else:
            self._deliver(s, data, addr, out)

    def _deliver(self, s: _Session, data: bytes, addr: Address, out: list[DemuxAction]) -> None:
        self.stats.delivered += 1
        last = out[-1] if out else None
        if isinstance(last, Deliver) and last.session == s.session and last.addr == addr:
            last.datagrams.append(data)
            return
        moved = addr != s.addr
        if moved:
            self.stats.float_candidates += 1
        out.append(Deliver(s.session, addr, [data], moved))

    def _drop(self, reason: DropReason) -> None:
        self.stats.drops[reason] += 1

    # -- the stateless handshake ---------------------------------------------------------
    def _first_packet(
        self,
        data: bytes,
        addr: Address,
        now: float,
        out: list[DemuxAction],
        holder: _Session | None,
    ) -> None:
        if len(data) < 1 + SESSION_ID_LEN:
            self._drop(DropReason.NOT_FIRST_PACKET)
            return
        op, key_id = data[0] >> P_OPCODE_SHIFT, data[0] & P_KEY_ID_MASK
        if key_id or op not in _FIRST_OPCODES or not any(data[1 : 1 + SESSION_ID_LEN]):
            self._drop(DropReason.NOT_FIRST_PACKET)
            return
        if (op in _V2_ONLY) != (self._v2 is not None):
            self._drop(DropReason.TLS_CRYPT_V2 if op in _V2_ONLY else DropReason.NEEDS_CLIENT_KEY)
            return
        if not self.accepting:
            self._drop(DropReason.NOT_ACCEPTING)
            return
        opened = self._open_v2(data, now) if self._v2 is not None else self._open(data, now)
        if opened is None:
            return
        plain, keys = opened
        try:
            pkt = parse_control_packet(plain)
        except RemoteProtocolError:
            self._drop(DropReason.MALFORMED)
            return
        if pkt.opcode is Opcode.CONTROL_HARD_RESET_CLIENT_V2:
            self._answer_reset(pkt, keys, addr, now, out)
        elif pkt.opcode is Opcode.CONTROL_HARD_RESET_CLIENT_V3:
            if data[TLS_CRYPT_OFF_PID] != EARLY_NEG_MARK:
                self._drop(DropReason.NO_EARLY_NEGOTIATION)
                return
            self._answer_reset(pkt, keys, addr, now, out, EARLY_NEG_RESEND_WKC)
        else:
            self._accept_cookie(pkt, keys, data, addr, now, out, holder)

    def _open(self, data: bytes, now: float) -> tuple[bytes, _FirstKeys] | None:
        """Authenticate with the server-wide key (tls-auth / tls-crypt / none)."""
        verifier = self._verifier or self._wrap_factory(1)
        try:
            plain = verifier.unwrap(data, now)
        except RemoteProtocolError:
            self._verifier = verifier  # authentication failed before any replay state moved
            self._drop(DropReason.UNAUTHENTIC)
            return None
        self._verifier = None
        return plain, self._static

    def _open_v2(self, data: bytes, now: float) -> tuple[bytes, _FirstKeys] | None:
        """Open the appended WKc, then authenticate the packet with the Kc inside it."""
        v2 = self._v2
        assert v2 is not None
        try:
            wrapped, wkc = split_wkc(data)
            kc = v2.open(wkc).key
        except RemoteProtocolError:
            self._drop(DropReason.BAD_CLIENT_KEY)
            return None
        try:
            plain = v2.wrap_for(kc).unwrap(wrapped, now)
        except RemoteProtocolError:
            self._drop(DropReason.UNAUTHENTIC)
            return None

        def wraps(pid: int) -> ControlWrap:
            return v2.wrap_for(kc, pid)

        return plain, _FirstKeys(wraps, kc.data, wkc)

    def _slot(self, now: float) -> int:
        return int(now // self._slot_len)

    def _cookie(self, slot: int, addr: Address, client_sid: bytes) -> bytes:
        mac = self._cookie_mac.copy()
        mac.update(_U32.pack(slot & MAX_UINT32))
        mac.update(repr(addr).encode())
        mac.update(client_sid)
        return mac.digest()[:SESSION_ID_LEN]

    def _answer_reset(
        self, pkt: ControlPacket, keys: _FirstKeys, addr: Address, now: float,
        out: list[DemuxAction], payload: bytes = b"",
    ) -> None:
        if not self._rate.allow(now):
            self._drop(DropReason.RATE_LIMITED)
            return
        cookie = self._cookie(self._slot(now), addr, pkt.session_id)
        reply = ControlPacket(
            Opcode.CONTROL_HARD_RESET_SERVER_V2, 0, cookie, (0,), pkt.session_id, 0, payload
        )
        self.stats.resets_answered += 1
        out.append(Reply(addr, keys.wraps(1).wrap(serialize_control_packet(reply), now)))

    def _cookie_valid(self, echoed: bytes, addr: Address, client_sid: bytes, now: float) -> bool:
        slot = self._slot(now)
        ok = False
        for off in COOKIE_SLOT_OFFSETS:  # no early exit: the cost does not depend on the slot
            ok |= hmac.compare_digest(self._cookie(slot + off, addr, client_sid), echoed)
        return ok

    def _accept_cookie(
        self,
        pkt: ControlPacket,
        keys: _FirstKeys,
        data: bytes,
        addr: Address,
        now: float,
        out: list[DemuxAction],
        holder: _Session | None,
    ) -> None:
        if pkt.remote_session_id is None:  # no ACK, hence no echoed cookie
            self._drop(DropReason.BAD_COOKIE)
            return
        if max(pkt.acks) > MAX_COOKIE_MESSAGE_ID or (
            pkt.message_id is not None and pkt.message_id > MAX_COOKIE_MESSAGE_ID
        ):
            self._drop(DropReason.BAD_MESSAGE_ID)
            return
        if not self._cookie_valid(pkt.remote_session_id, addr, pkt.session_id, now):
            self._drop(DropReason.BAD_COOKIE)
            return
        if not self._new_rate.allow(now):  # OpenVPN: before the instance, after the cookie
            self._drop(DropReason.CONNECT_FREQ)
            return
        if holder is not None:
            self.remove_session(holder.session)
            self.stats.sessions_replaced += 1
        new = self._admit(addr, pkt.session_id)
        if new is None:
            return
        self._by_addr[addr] = new
        self._by_sid[pkt.session_id] = new
        self._rate.credit()
        out.append(
            NewSession(
                new.session,
                addr,
                new.peer_id,
                pkt.remote_session_id,
                pkt.session_id,
                keys.wraps(2),
                data,
                None if holder is None else holder.session,
                keys.client_key,
                keys.wkc,
            )
        )

    # -- session lifecycle -------------------------------------------------------------
    def _admit(self, addr: Address, client_sid: bytes) -> _Session | None:
        """max-clients, then the lowest free peer-id and a new session number."""
        if self._slots.used >= self._slots.limit:  # every listener's sessions together
            self._drop(DropReason.MAX_CLIENTS)
            return None
        self._slots.used += 1
        if self._free_peer_ids:
            peer_id = heapq.heappop(self._free_peer_ids)
        else:
            peer_id = self._next_peer_id
            self._next_peer_id += 1
        s = _Session(self._next_session, peer_id, addr, client_sid)
        self._next_session += 1
        self._by_peer[peer_id] = s
        self._by_id[s.session] = s
        self.stats.sessions_created += 1
        return s

    def add_stream_session(self, addr: Address) -> tuple[int, int] | None:
        """A TCP connection's session (no cookie; routed by its connection, not here):
        counts against max-clients and takes a peer-id. (session, peer_id), or None when
        full. Remove it with `remove_session` like any other."""
        if not self.accepting:
            self._drop(DropReason.NOT_ACCEPTING)
            return None
        s = self._admit(addr, b"")
        return None if s is None else (s.session, s.peer_id)

    def remove_session(self, session: int) -> None:
        """Forget a session: its address and peer-id become free (idempotent)."""
        s = self._by_id.pop(session, None)
        if s is None:
            return
        self._slots.used -= 1
        if self._by_addr.get(s.addr) is s:
            del self._by_addr[s.addr]
        if self._by_sid.get(s.client_sid) is s:
            del self._by_sid[s.client_sid]
        del self._by_peer[s.peer_id]
        heapq.heappush(self._free_peer_ids, s.peer_id)

    def confirm_float(self, session: int, new_addr: Address) -> bool:
        """The session authenticated a packet from `new_addr`: move it there. Refused
        (False) when another session holds that address; OpenVPN closes the holder instead
        if both have the same certificate, which the caller can do with `remove_session`
        first. False also for an unknown session."""
        s = self._by_id.get(session)
        if s is None:
            return False
        if new_addr == s.addr:
            return True
        holder = self._by_addr.get(new_addr)
        if holder is not None:
            self.stats.floats_refused += 1
            return False
        if self._by_addr.get(s.addr) is s:
            del self._by_addr[s.addr]
        s.addr = new_addr
        self._by_addr[new_addr] = s
        self.stats.floats_confirmed += 1
        return True

    def stop_accepting(self) -> None:
        """Shutdown pending: existing sessions keep their traffic, newcomers get nothing."""
        self.accepting = False
