"""The packet muxer core: routes wire packets, owns the hard reset and the session ids.

Why the hard reset lives here and not in the reliable layer: a 2.6 UDP server answers a
client reset statelessly (its session id is an HMAC cookie, it never retransmits), and it
creates state only when the client's next packet ACKs that reset with the cookie as peer
session id. So the reset is a tiny exchange of its own: we (re)send our reset with message
id 0 and exponential backoff until the server's reset arrives; then both session ids are
known, and the reliable layer starts at message id 1 in both directions with ACK 0 pending,
which guarantees that the first packet after the reset carries the cookie.

The server role (`is_server=True`) is the other end of the same exchange, for one peer: it
waits for the client's P_CONTROL_HARD_RESET_CLIENT_V2 (message id 0), answers with
P_CONTROL_HARD_RESET_SERVER_V2 (message id 0, ACKing the client's 0, our session id), and
emits the same `ResetComplete`, so every layer above starts exactly as on the client. It
never retransmits its reset on a timer: the client keeps resending its own until ours
arrives, and each repeat of the client's reset (same session id) is answered again, so the
exchange is idempotent and a lost answer costs one client retry, as with a 2.6 server.
Routing many clients to sessions is not done here (one muxer = one peer).

Everything here is sans-IO: time comes in as `now`, wire bytes come in and go out as lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from trivpn.controlchannel.packet import (
    SESSION_ID_LEN,
    ControlPacket,
    Opcode,
    parse_control_packet,
    serialize_control_packet,
)
from trivpn.controlchannel.wrap import ControlWrap, StaticKey, TLSCrypt
from trivpn.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from trivpn.messages import ResetComplete
from trivpn.records import dataclass
from trivpn.reliabletransport.core import OutgoingPacket
from trivpn.wire import P_KEY_ID_MASK, is_data_byte0

#: OpenVPN's initial control retransmission timeout (`tls-timeout`).
RESET_TIMEOUT = 2.0
#: Backoff cap for reset retransmissions.
MAX_RESET_TIMEOUT = 16.0

@dataclass(slots=True)
class MuxStats:
    """Why packets were dropped, for `--verb` output and tests."""

    data_in: int = 0
    control_in: int = 0
    resets_sent: int = 0
    drop_malformed: int = 0
    drop_unauthentic: int = 0
    drop_session: int = 0
    drop_early: int = 0
    #: tls-crypt-v2 client resets this server-role muxer refused (only a session made by the
    #: demultiplexer's cookie exchange serves tls-crypt-v2)
    drop_unsupported: int = 0


class PacketMuxer:
    """Per-session muxer of either role; the reset exchange is the only state it keeps."""

    def __init__(
        self,
        wrap: ControlWrap,
        local_session_id: bytes,
        *,
        reset_timeout: float = RESET_TIMEOUT,
        max_reset_timeout: float = MAX_RESET_TIMEOUT,
        wkc: bytes | None = None,
        is_server: bool = False,
        client_wkc: bytes | None = None,
    ) -> None:
        """`wkc` is the tls-crypt-v2 wrapped client key: the reset becomes
        P_CONTROL_HARD_RESET_CLIENT_V3 carrying it, and if the server asks (early
        negotiation flag RESEND_WKC) our message id 1 is sent as P_CONTROL_WKC_V1 with it.

        `is_server`: answer the peer's reset instead of sending ours (see the module
        docstring); `wrap` must then be built for the server direction.

        `client_wkc` (server role, tls-crypt-v2 on a stream): the wrapped key the client
        appended to its P_CONTROL_HARD_RESET_CLIENT_V3, already opened by the caller, whose
        Kc keys `wrap`; it is stripped from that reset (and from any P_CONTROL_WKC_V1)."""
        if len(local_session_id) != SESSION_ID_LEN or not any(local_session_id):
            raise LocalProtocolError("session id must be 8 bytes and not all zero")
        if is_server and wkc is not None:
            raise ConfigError("tls-crypt-v2: a server-role muxer sends no wrapped key (it takes client_wkc)")
        if client_wkc is not None and not is_server:
            raise ConfigError("tls-crypt-v2: only a server-role muxer takes a client's wrapped key")
        self.is_server = is_server
        #: server role: our reset is owed to the client (first answer or a repeat)
        self._answer_owed = False
        self.wrap = wrap
        self.local_session_id = local_session_id
        self.remote_session_id: bytes | None = None
        self._reset_timeout = reset_timeout
        self._max_reset_timeout = max_reset_timeout
        self._next_reset: float | None = None
        self._current_timeout = reset_timeout
        self._events: list[ResetComplete] = []
        self.stats = MuxStats()
        self.wkc = wkc
        #: the server wants the WKc again on message id 1 (it kept no state: HMAC cookie)
        self.resend_wkc = False
        self._id1_sent = False
        #: tls-crypt with the dynamic key, for control packets of key id > 0 (2.6 dyn-tls-crypt)
        self.dynamic_wrap: TLSCrypt | None = None
        #: server role, tls-crypt-v2: the client's WKc (see `server_after_cookie`)
        self.client_wkc: bytes | None = client_wkc

    @classmethod
    def server_after_cookie(
        cls, wrap: ControlWrap, local_session_id: bytes, remote_session_id: bytes,
        *, client_wkc: bytes | None = None,
    ) -> PacketMuxer:
        """Server role for a client whose reset a stateless demultiplexer already answered
        (HMAC cookie = `local_session_id`): the exchange is complete, nothing is owed, and
        the usual `ResetComplete` comes out with the first `receive_datagrams`, so every
        layer above starts exactly as after `_on_client_reset`. `wrap` must not reuse the
        replay packet-id of that answer (the demultiplexer hands one starting at 2).

        `client_wkc`: a tls-crypt-v2 client's wrapped key, which it appends to its
        P_CONTROL_WKC_V1 (message id 1, retransmissions too): stripped here, and the packet
        goes up as the P_CONTROL_V1 it is; a WKC_V1 with any other trailer is dropped."""
        if len(remote_session_id) != SESSION_ID_LEN or not any(remote_session_id):
            raise LocalProtocolError("session id must be 8 bytes and not all zero")
        mux = cls(wrap, local_session_id, is_server=True)
        mux.remote_session_id = remote_session_id
        mux.client_wkc = client_wkc
        mux._events.append(ResetComplete(local_session_id, remote_session_id, b""))
        return mux

    def set_dynamic_wrap(self, key: bytes, *, now_unix: int) -> None:
        """Use `key` (256 bytes) as this role's tls-crypt key for key ids above 0."""
        self.dynamic_wrap = TLSCrypt(StaticKey(key), server=self.is_server, timestamp=now_unix)

    def _wrap_for(self, key_id: int) -> ControlWrap:
        return self.dynamic_wrap if key_id and self.dynamic_wrap is not None else self.wrap

    # -- the hard reset ---------------------------------------------------------------
    def start(self, now: float) -> None:
        """Begin the reset exchange: the client's first reset is due at once; the server
        waits for the client's."""
        if self.is_server:
            return
        self._next_reset = now
        self._current_timeout = self._reset_timeout

    @property
    def reset_complete(self) -> bool:
        return self.remote_session_id is not None

    @property
    def answer_owed(self) -> bool:
        """Server role: a reset answer waits in `datagrams_to_send` (the service flushes it
        right after the receive that caused it, there is no timer for it)."""
        return self._answer_owed

    def get_timer(self) -> float | None:
        return None if self.reset_complete else self._next_reset

    def handle_timer(self, now: float) -> None:
        """Nothing to do: `datagrams_to_send` emits whatever is due."""

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Our hard reset, when it is due (first send and retransmissions)."""
        if self.is_server:
            return self._server_reset(now)
        if self.reset_complete or self._next_reset is None or now < self._next_reset:
            return []
        opcode = (
            Opcode.CONTROL_HARD_RESET_CLIENT_V3 if self.wkc else Opcode.CONTROL_HARD_RESET_CLIENT_V2
        )
        pkt = ControlPacket(opcode, 0, self.local_session_id, message_id=0)
        self._next_reset = now + self._current_timeout
        self._current_timeout = min(self._current_timeout * 2, self._max_reset_timeout)
        self.stats.resets_sent += 1
        wire = self.wrap.wrap(serialize_control_packet(pkt), now)
        return [wire + self.wkc if self.wkc else wire]

    def _server_reset(self, now: float) -> list[bytes]:
        """The answer to the client's reset: message id 0, ACKing its 0, our session id."""
        if not self._answer_owed or self.remote_session_id is None:
            return []
        self._answer_owed = False
        pkt = ControlPacket(
            Opcode.CONTROL_HARD_RESET_SERVER_V2,
            0,
            self.local_session_id,
            (0,),
            self.remote_session_id,
            message_id=0,
        )
        self.stats.resets_sent += 1
        return [self.wrap.wrap(serialize_control_packet(pkt), now)]

    def _on_client_reset(self, pkt: ControlPacket) -> bool:
        """Server role: take (or answer again) a client reset. False: not one to take."""
        if pkt.opcode is Opcode.CONTROL_HARD_RESET_CLIENT_V3 and self.client_wkc is None:
            self.stats.drop_unsupported += 1
            return True
        if not (
            pkt.message_id == 0
            and pkt.key_id == 0
            and any(pkt.session_id)
        ):
            return False
        if self.remote_session_id is None:
            self.remote_session_id = pkt.session_id
            self._events.append(ResetComplete(self.local_session_id, pkt.session_id, b""))
        elif pkt.session_id != self.remote_session_id:
            return False  # another client: the later server demultiplexer's business
        self._answer_owed = True
        return True

    def authenticates(self, datagram: bytes, now: float) -> bool:
        """Server role: would this control packet be taken as this client's own? Records
        nothing (the server asks before it lets the session float to a new address). Only a
        per-client key can say so: the tls-crypt-v2 client key, or the dynamic tls-crypt key
        of a renegotiation; a server-wide tls-auth/tls-crypt key is shared by every client,
        so under it (or without a wrap) the answer is always False."""
        if not datagram or is_data_byte0(datagram[0]) or self.remote_session_id is None:
            return False
        key_id = datagram[0] & P_KEY_ID_MASK
        if self.client_wkc is None and not (key_id and self.dynamic_wrap is not None):
            return False
        if self.client_wkc is not None and datagram[0] >> 3 in _WKC_OPCODES:
            if len(datagram) <= len(self.client_wkc) or not datagram.endswith(self.client_wkc):
                return False
            datagram = datagram[: -len(self.client_wkc)]
        wrap = self._wrap_for(key_id)
        if not isinstance(wrap, TLSCrypt) or datagram[1 : 1 + SESSION_ID_LEN] != self.remote_session_id:
            return False
        return wrap.verifies(datagram, now)

    # -- incoming ----------------------------------------------------------------------
    def receive_datagrams(
        self, datagrams: Sequence[bytes], now: float
    ) -> tuple[list[bytes], list[ControlPacket]]:
        """Split a batch into data packets (for the data channel) and control packets.

        Control packets are unwrapped, parsed and checked against the session ids here, so
        layers above only ever see authentic packets of this session. Bad ones are counted.
        """
        data: list[bytes] = []
        control: list[ControlPacket] = []
        stats = self.stats
        for d in datagrams:
            if not d:
                stats.drop_malformed += 1
                continue
            if is_data_byte0(d[0]):
                if self.remote_session_id is None:
                    stats.drop_early += 1
                else:
                    data.append(d)
                continue
            if self.client_wkc is not None and d[0] >> 3 in _WKC_OPCODES:
                if len(d) <= len(self.client_wkc) or not d.endswith(self.client_wkc):
                    stats.drop_unauthentic += 1
                    continue
                d = d[: -len(self.client_wkc)]
            try:
                plain = self._wrap_for(d[0] & P_KEY_ID_MASK).unwrap(d, now)
            except RemoteProtocolError:
                stats.drop_unauthentic += 1
                continue
            try:
                pkt = parse_control_packet(plain)
            except RemoteProtocolError:
                stats.drop_malformed += 1
                continue
            if pkt.acks and pkt.remote_session_id != self.local_session_id:
                stats.drop_session += 1
                continue
            if self.is_server and pkt.opcode in _CLIENT_RESETS:
                if not self._on_client_reset(pkt):
                    if self.remote_session_id is None:
                        stats.drop_early += 1
                    else:
                        stats.drop_session += 1
                continue
            if self.remote_session_id is None:
                if (
                    not self.is_server
                    and pkt.opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2
                    and pkt.message_id == 0
                    and pkt.key_id == 0
                    and any(pkt.session_id)
                ):
                    self.remote_session_id = pkt.session_id
                    self._next_reset = None
                    self.resend_wkc = bool(self.wkc) and _early_neg_flags(pkt.payload) & 1 == 1
                    self._events.append(
                        ResetComplete(self.local_session_id, pkt.session_id, pkt.payload)
                    )
                else:
                    stats.drop_early += 1
                continue
            if pkt.session_id != self.remote_session_id:
                stats.drop_session += 1
                continue
            if pkt.opcode is Opcode.CONTROL_WKC_V1:
                pkt = dataclasses.replace(pkt, opcode=Opcode.CONTROL_V1)
            stats.control_in += 1
            control.append(pkt)
        stats.data_in += len(data)
        return data, control

    def events(self) -> list[ResetComplete]:
        ev, self._events = self._events, []
        return ev

    # -- outgoing control --------------------------------------------------------------
    def wrap_control(self, key_id: int, packets: Sequence[OutgoingPacket], now: float) -> list[bytes]:
        """Frame the reliable layer's packets: add session ids, serialize, wrap."""
        if self.remote_session_id is None:
            raise LocalProtocolError("control packets before the reset exchange finished")
        out: list[bytes] = []
        for p in packets:
            acks = p.acks
            opcode = Opcode(p.opcode)
            wkc_here = self.resend_wkc and key_id == 0 and p.message_id == 1
            if self.resend_wkc and key_id == 0 and not self._id1_sent:
                if opcode is Opcode.ACK_V1:
                    # the stateless server cannot check anything before it has the WKc; the
                    # ACK rides on message 1 instead (re-ACKed from the MRU list)
                    continue
            if wkc_here:
                opcode = Opcode.CONTROL_WKC_V1
                self._id1_sent = True
            pkt = ControlPacket(
                opcode,
                key_id,
                self.local_session_id,
                tuple(acks),
                self.remote_session_id if acks else None,
                p.message_id,
                p.payload,
            )
            wire = self._wrap_for(key_id).wrap(serialize_control_packet(pkt), now)
            out.append(wire + self.wkc if wkc_here and self.wkc else wire)
        return out


_CLIENT_RESETS = (Opcode.CONTROL_HARD_RESET_CLIENT_V2, Opcode.CONTROL_HARD_RESET_CLIENT_V3)
#: opcodes a tls-crypt-v2 client appends its WKc to
_WKC_OPCODES = frozenset({int(Opcode.CONTROL_HARD_RESET_CLIENT_V3), int(Opcode.CONTROL_WKC_V1)})


def _early_neg_flags(payload: bytes) -> int:
    """EARLY_NEG_FLAGS from the TLV list a 2.6 server puts in its reset (0 if absent).

    TLVs are uint16 type, uint16 length, value; unknown types are skipped, and a
    truncated list ends the parse (whatever was read stays valid).
    """
    flags = 0
    pos = 0
    while pos + 4 <= len(payload):
        kind = int.from_bytes(payload[pos : pos + 2], "big")
        length = int.from_bytes(payload[pos + 2 : pos + 4], "big")
        value = payload[pos + 4 : pos + 4 + length]
        if len(value) < length:
            break
        if kind == 1 and length == 2:
            flags = int.from_bytes(value, "big")
        pos += 4 + length
    return flags
