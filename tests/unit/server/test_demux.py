"""The server's UDP demultiplexer: cookie handshake, limits, peer-id, float, hostile input."""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
import tracemalloc
from collections.abc import Sequence
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.controlchannel.packet import (
    ControlPacket,
    Opcode,
    parse_control_packet,
    serialize_control_packet,
)
from trivpn.controlchannel.wrap import ControlWrap, NoWrap, StaticKey, TLSAuth, TLSCrypt
from trivpn.errors import ConfigError
from trivpn.messages import ResetComplete
from trivpn.packetmuxer.core import PacketMuxer
from trivpn.reliabletransport.core import OutgoingPacket
from trivpn.server.demux import (
    ConnectFreq,
    Deliver,
    DemuxConfig,
    DropReason,
    NewSession,
    Reply,
    ResetRateLimit,
    ServerDemux,
    SessionSlots,
)
from trivpn.testing.pki import static_key_text

KEY = StaticKey.from_text(static_key_text(bytes(range(256))))
COOKIE_KEY = b"k" * 32
CLI = bytes.fromhex("1111111111111111")
ADDR = ("192.0.2.1", 40000)
T = TypeVar("T")


def srv_wrap(pid: int) -> ControlWrap:
    return TLSAuth(KEY, 0, "SHA256", timestamp=1000, initial_packet_id=pid)


def no_wrap(pid: int) -> ControlWrap:
    return NoWrap()


def cli_wrap() -> TLSAuth:
    return TLSAuth(KEY, 1, "SHA256", timestamp=900)


def demux(**cfg: Any) -> ServerDemux:
    return ServerDemux(srv_wrap, cookie_key=COOKIE_KEY, config=DemuxConfig(**cfg))


def expected_cookie(slot: int, addr: object, sid: bytes = CLI) -> bytes:
    """The cookie recomputed from the documented formula, independently of the module."""
    msg = struct.pack("!I", slot & 0xFFFFFFFF) + repr(addr).encode() + sid
    return hmac.new(COOKIE_KEY, msg, hashlib.sha256).digest()[:8]


def reset(w: ControlWrap, sid: bytes = CLI, now: float = 0.0) -> bytes:
    pkt = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, sid, (), None, 0, b"")
    return w.wrap(serialize_control_packet(pkt), now)


def returning(
    w: ControlWrap,
    cookie: bytes,
    *,
    sid: bytes = CLI,
    opcode: Opcode = Opcode.CONTROL_V1,
    acks: tuple[int, ...] = (0,),
    message_id: int | None = 1,
    key_id: int = 0,
) -> bytes:
    payload = b"" if opcode is Opcode.ACK_V1 else b"hello"
    if opcode is Opcode.ACK_V1:
        message_id = None
    pkt = ControlPacket(opcode, key_id, sid, acks, cookie if acks else None, message_id, payload)
    return w.wrap(serialize_control_packet(pkt), 0.0)


def only(actions: Sequence[object], kind: type[T]) -> T:
    assert len(actions) == 1 and isinstance(actions[0], kind), actions
    return actions[0]


def connect(d: ServerDemux, addr: object, sid: bytes | None = None, now: float = 0.0) -> NewSession:
    """A session for `addr`; each client has its own session id (CLI for ADDR), as real
    clients do: the demux finds a client's control packets from a new address by it."""
    if sid is None:
        sid = CLI if addr == ADDR else hashlib.sha256(repr(addr).encode()).digest()[:8]
    w = cli_wrap()
    rep = only(d.receive_datagram(reset(w, sid), addr, now), Reply)
    assert isinstance(rep, Reply)
    cookie = parse_control_packet(cli_wrap().unwrap(rep.datagram, now)).session_id
    ns = only(d.receive_datagram(returning(w, cookie, sid=sid), addr, now), NewSession)
    assert isinstance(ns, NewSession)
    return ns


def data_v2(peer_id: int, body: bytes = b"\x00" * 20) -> bytes:
    return bytes([Opcode.DATA_V2 << 3]) + peer_id.to_bytes(3, "big") + body


# -- the stateless reset ---------------------------------------------------------------
def test_reset_is_answered_statelessly_with_the_cookie() -> None:
    d = demux()
    rep = only(d.receive_datagram(reset(cli_wrap()), ADDR, 45.0), Reply)
    assert isinstance(rep, Reply) and rep.addr == ADDR
    w = cli_wrap()
    plain = w.unwrap(rep.datagram, 45.0)
    pkt = parse_control_packet(plain)
    assert pkt.opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2 and pkt.key_id == 0
    assert (pkt.acks, pkt.remote_session_id, pkt.message_id, pkt.payload) == ((0,), CLI, 0, b"")
    assert pkt.session_id == expected_cookie(1, ADDR)  # slot = 45 // ((60 + 1) // 2)
    assert struct.unpack("!I", rep.datagram[9 + 32 : 9 + 36])[0] == 1  # replay packet-id 1
    assert d.table_sizes() == (0, 0, 0, 0) and d.session_count == 0
    # a repeat gets the very same cookie, still without state
    again = only(d.receive_datagram(reset(cli_wrap()), ADDR, 50.0), Reply)
    assert isinstance(again, Reply)
    assert (
        parse_control_packet(cli_wrap().unwrap(again.datagram, 50.0)).session_id == pkt.session_id
    )
    assert d.stats.resets_answered == 2 and d.table_sizes() == (0, 0, 0, 0)


def test_returning_control_with_the_cookie_creates_the_session() -> None:
    d = demux()
    ns = connect(d, ADDR)
    assert (ns.addr, ns.peer_id, ns.remote_session_id) == (ADDR, 0, CLI)
    assert ns.local_session_id == expected_cookie(0, ADDR)
    assert parse_control_packet(srv_wrap(1).unwrap(ns.first_packet, 0.0)).payload == b"hello"
    assert d.session_count == 1 and d.session_for_addr(ADDR) == ns.session
    assert d.session_info(ns.session) == (0, ADDR)
    # the next packet from that address is delivered, whatever it is
    nxt = only(d.receive_datagram(b"\x20garbage", ADDR, 1.0), Deliver)
    assert isinstance(nxt, Deliver) and nxt.session == ns.session and not nxt.float_candidate


def test_ack_v1_with_the_cookie_creates_the_session() -> None:
    d = demux()
    cookie = expected_cookie(0, ADDR)
    pkt = returning(cli_wrap(), cookie, opcode=Opcode.ACK_V1, acks=(0, 1))
    assert isinstance(only(d.receive_datagram(pkt, ADDR, 0.0), NewSession), NewSession)


def test_returning_packet_from_another_source_port_is_refused() -> None:
    d = demux()
    cookie = expected_cookie(0, ADDR)
    assert d.receive_datagram(returning(cli_wrap(), cookie), ("192.0.2.1", 40001), 0.0) == []
    assert d.receive_datagram(returning(cli_wrap(), cookie), ("192.0.2.2", 40000), 0.0) == []
    assert d.stats.drops[DropReason.BAD_COOKIE] == 2 and d.table_sizes() == (0, 0, 0, 0)
    # and with another client session id
    assert d.receive_datagram(returning(cli_wrap(), cookie, sid=b"\x07" * 8), ADDR, 0.0) == []
    assert d.stats.drops[DropReason.BAD_COOKIE] == 3


@pytest.mark.parametrize(
    ("made_at", "back_at", "accepted"),
    [
        (0.0, 0.0, True),
        (0.0, 89.9, True),  # slot 2: offset -2
        (0.0, 90.0, False),  # slot 3: offset -3, expired
        (60.0, 30.0, True),  # made in slot 2, back in slot 1: offset +1
        (60.0, 29.9, False),  # offset +2
    ],
)
def test_cookie_is_valid_for_slot_offsets_minus_2_to_plus_1(
    made_at: float, back_at: float, accepted: bool
) -> None:
    d = demux()
    rep = only(d.receive_datagram(reset(cli_wrap()), ADDR, made_at), Reply)
    assert isinstance(rep, Reply)
    cookie = parse_control_packet(cli_wrap().unwrap(rep.datagram, 0.0)).session_id
    out = d.receive_datagram(returning(cli_wrap(), cookie), ADDR, back_at)
    assert bool(out) is accepted
    assert d.stats.drops[DropReason.BAD_COOKIE] == (0 if accepted else 1)


def test_slot_length_follows_hand_window() -> None:
    d = demux(hand_window=9)  # slots of 5 s
    cookie = expected_cookie(0, ADDR)
    assert d.receive_datagram(returning(cli_wrap(), cookie), ADDR, 15.0) == []
    assert d.receive_datagram(returning(cli_wrap(), cookie), ADDR, 14.9) != []


@pytest.mark.parametrize(
    ("acks", "message_id"), [((0,), 2), ((2,), 1), ((0, 5), 1), ((0,), 0xFFFFFFFF)]
)
def test_deb12u2_message_ids_above_1_are_refused(acks: tuple[int, ...], message_id: int) -> None:
    d = demux()
    pkt = returning(cli_wrap(), expected_cookie(0, ADDR), acks=acks, message_id=message_id)
    assert d.receive_datagram(pkt, ADDR, 0.0) == []
    assert d.stats.drops[DropReason.BAD_MESSAGE_ID] == 1 and d.session_count == 0


def test_first_packet_filter() -> None:
    d = demux()
    w = cli_wrap()
    cookie = expected_cookie(0, ADDR)
    cases: list[tuple[bytes, DropReason]] = [
        (b"", DropReason.EMPTY),
        (b"\x38\x11", DropReason.NOT_FIRST_PACKET),  # too short for a session id
        (returning(w, cookie, key_id=1), DropReason.NOT_FIRST_PACKET),
        (reset(w, sid=b"\x00" * 8), DropReason.NOT_FIRST_PACKET),
        (returning(w, cookie, opcode=Opcode.CONTROL_SOFT_RESET_V1), DropReason.NOT_FIRST_PACKET),
        (
            returning(w, cookie, opcode=Opcode.CONTROL_HARD_RESET_SERVER_V2),
            DropReason.NOT_FIRST_PACKET,
        ),
        (
            bytes([Opcode.CONTROL_HARD_RESET_CLIENT_V3 << 3]) + CLI + b"\x00" * 60,
            DropReason.TLS_CRYPT_V2,
        ),
        (returning(w, cookie, opcode=Opcode.CONTROL_WKC_V1), DropReason.TLS_CRYPT_V2),
        (reset(TLSAuth(KEY, 0, "SHA256", timestamp=1)), DropReason.UNAUTHENTIC),  # wrong direction
        (reset(w)[:-1] + b"\x01", DropReason.UNAUTHENTIC),
        (w.wrap(bytes([Opcode.CONTROL_V1 << 3]) + CLI + b"\x09", 0.0), DropReason.MALFORMED),
        (returning(w, cookie, acks=()), DropReason.BAD_COOKIE),  # nothing echoed
        (bytes([Opcode.DATA_V1 << 3]) + b"\x00" * 30, DropReason.NO_SESSION),
        (data_v2(0xFFFFFF), DropReason.NO_SESSION),
        (data_v2(7), DropReason.UNKNOWN_PEER_ID),
        (b"\x48\x00", DropReason.NO_SESSION),  # V2 shorter than 4: looked up by address
    ]
    for blob, reason in cases:
        before = d.stats.drops[reason]
        assert d.receive_datagram(blob, ADDR, 0.0) == [], reason
        assert d.stats.drops[reason] == before + 1, reason
    assert d.table_sizes() == (0, 0, 0, 0) and d.stats.resets_answered == 0


@pytest.mark.parametrize("kind", ["tls-auth", "tls-crypt", "none"])
def test_round_trip_with_the_real_client_muxer(kind: str) -> None:
    """Client reset -> stateless reply -> the client's first CONTROL_V1 carries the cookie ->
    NewSession -> a server-role muxer that continues where the demux left off."""
    if kind == "tls-auth":
        cw: ControlWrap = TLSAuth(KEY, 1, "SHA512", timestamp=5)

        def factory(pid: int) -> ControlWrap:
            return TLSAuth(KEY, 0, "SHA512", timestamp=7, initial_packet_id=pid)
    elif kind == "tls-crypt":
        cw = TLSCrypt(KEY, server=False, timestamp=5)

        def factory(pid: int) -> ControlWrap:
            return TLSCrypt(KEY, server=True, timestamp=7, initial_packet_id=pid)
    else:
        cw = NoWrap()

        def factory(pid: int) -> ControlWrap:
            return NoWrap()

    d = ServerDemux(factory, cookie_key=COOKIE_KEY)
    client = PacketMuxer(cw, CLI)
    client.start(100.0)
    (hello_reset,) = client.datagrams_to_send(100.0)
    rep = only(d.receive_datagram(hello_reset, ADDR, 100.0), Reply)
    assert isinstance(rep, Reply) and d.session_count == 0
    client.receive_datagrams([rep.datagram], 100.1)
    (done,) = client.events()
    assert done.remote_session_id == expected_cookie(3, ADDR)
    first = client.wrap_control(
        0, [OutgoingPacket(Opcode.CONTROL_V1, (0,), 1, b"ClientHello")], 100.2
    )
    ns = only(d.receive_datagrams([(first[0], ADDR)], 100.2), NewSession)
    assert isinstance(ns, NewSession)
    assert (ns.local_session_id, ns.remote_session_id, ns.peer_id) == (
        done.remote_session_id,
        CLI,
        0,
    )
    server = PacketMuxer.server_after_cookie(ns.wrap, ns.local_session_id, ns.remote_session_id)
    _, control = server.receive_datagrams([ns.first_packet], 100.2)
    assert server.events() == [ResetComplete(ns.local_session_id, CLI, b"")]
    assert [p.payload for p in control] == [b"ClientHello"]
    assert server.datagrams_to_send(100.3) == [] and server.get_timer() is None
    # the server's reply passes the client's replay check although the reset used id 1
    answer = server.wrap_control(
        0, [OutgoingPacket(Opcode.CONTROL_V1, (1,), 1, b"ServerHello")], 100.3
    )
    _, back = client.receive_datagrams(answer, 100.3)
    assert [p.payload for p in back] == [b"ServerHello"] and client.stats.drop_unauthentic == 0
    # later client packets are delivered to the session
    more = client.wrap_control(0, [OutgoingPacket(Opcode.ACK_V1, (1,), None, b"")], 100.4)
    dl = only(d.receive_datagrams([(more[0], ADDR)], 100.4), Deliver)
    assert isinstance(dl, Deliver) and dl.session == ns.session
    assert len(server.receive_datagrams(dl.datagrams, 100.4)[1]) == 1


def test_packets_of_the_sessions_own_client_id_are_delivered_whatever_they_are() -> None:
    d = demux()
    ns = connect(d, ADDR)
    w = cli_wrap()
    for blob in [
        reset(w),  # a late duplicate of the client's reset: the session answers it
        returning(w, b"\x05" * 8, message_id=9),  # bad for a cookie, fine for a session
        returning(w, b"\x05" * 8, key_id=3),
        b"\x20" + CLI,
        b"\x20\x00\x00",  # too short to name a client session id
    ]:
        dl = only(d.receive_datagram(blob, ADDR, 1.0), Deliver)
        assert dl.session == ns.session
    assert sum(d.stats.drops.values()) == 0


def test_a_client_restarted_on_the_same_port_replaces_its_session_via_the_cookie() -> None:
    d = demux()
    old = connect(d, ADDR)
    other = connect(d, ("192.0.2.1", 2), sid=b"\x33" * 8)  # session ids are unique per client
    new_sid = b"\x42" * 8
    w = cli_wrap()
    # its new reset gets the stateless answer; the old session is untouched so far
    rep = only(d.receive_datagram(reset(w, sid=new_sid), ADDR, 1.0), Reply)
    assert d.session_for_addr(ADDR) == old.session and d.session_count == 2
    # a forged continuation (wrong cookie) from that address neither reaches nor kills it
    assert d.receive_datagram(returning(w, b"\x05" * 8, sid=new_sid), ADDR, 1.0) == []
    assert d.stats.drops[DropReason.BAD_COOKIE] == 1 and d.session_for_addr(ADDR) == old.session
    cookie = parse_control_packet(cli_wrap().unwrap(rep.datagram, 1.0)).session_id
    ns = only(d.receive_datagram(returning(w, cookie, sid=new_sid), ADDR, 1.0), NewSession)
    assert ns.replaces == old.session and ns.remote_session_id == new_sid
    assert d.session_info(old.session) is None and d.session_for_addr(ADDR) == ns.session
    assert ns.peer_id == old.peer_id == 0 and d.session_count == 2
    assert d.stats.sessions_replaced == 1
    assert d.session_for_addr(("192.0.2.1", 2)) == other.session
    assert old.replaces is None


# -- limits ------------------------------------------------------------------------------
def test_connect_freq_initial_limits_answers_and_returns_credit() -> None:
    d = demux(connect_freq_initial=3, connect_freq_initial_period=10.0)
    w = cli_wrap()
    answered = [d.receive_datagram(reset(w), ("192.0.2.9", p), 1.0) for p in range(5)]
    assert [len(a) for a in answered] == [1, 1, 1, 0, 0]
    assert d.stats.drops[DropReason.RATE_LIMITED] == 2
    # a client that comes back gives its reset back to the budget
    cookie = expected_cookie(0, ("192.0.2.9", 0))
    assert d.receive_datagram(returning(w, cookie), ("192.0.2.9", 0), 2.0) != []
    assert len(d.receive_datagram(reset(w), ("192.0.2.9", 9), 3.0)) == 1
    assert d.receive_datagram(reset(w), ("192.0.2.9", 10), 3.0) == []
    # the next period starts afresh
    assert len(d.receive_datagram(reset(w), ("192.0.2.9", 11), 11.0)) == 1


def test_max_clients_counts_every_session_and_frees_on_removal() -> None:
    d = demux(max_clients=2)
    a = connect(d, ("192.0.2.1", 1))
    connect(d, ("192.0.2.1", 2))
    w = cli_wrap()
    third = ("192.0.2.1", 3)
    assert len(d.receive_datagram(reset(w), third, 0.0)) == 1  # resets are still answered
    assert d.receive_datagram(returning(w, expected_cookie(0, third)), third, 0.0) == []
    assert d.stats.drops[DropReason.MAX_CLIENTS] == 1 and d.session_count == 2
    assert d.add_stream_session(("tcp", "192.0.2.5", 5)) is None
    d.remove_session(a.session)
    d.remove_session(a.session)  # idempotent
    assert connect(d, third).peer_id == 0


def test_max_clients_counts_every_listener_of_the_server() -> None:
    """With two listeners (`<listen>` blocks: UDP and TCP) and max-clients 2, the server
    holds 2 sessions in all, as OpenVPN's limit is per server. Before, each listener's
    demux counted its own: 4 sessions (and N listeners, N times the memory bound)."""
    slots = SessionSlots(2)
    udp = ServerDemux(srv_wrap, cookie_key=COOKIE_KEY, config=DemuxConfig(max_clients=2), slots=slots)
    tcp = ServerDemux(srv_wrap, cookie_key=COOKIE_KEY, config=DemuxConfig(max_clients=2), slots=slots)
    a = connect(udp, ADDR)
    assert tcp.add_stream_session(("tcp", "192.0.2.5", 5)) is not None
    assert tcp.add_stream_session(("tcp", "192.0.2.5", 6)) is None
    w, other, sid = cli_wrap(), ("192.0.2.1", 2), b"\x22" * 8
    udp.receive_datagram(reset(w, sid), other, 0.0)
    assert udp.receive_datagram(returning(w, expected_cookie(0, other, sid), sid=sid), other, 0.0) == []
    assert udp.stats.drops[DropReason.MAX_CLIENTS] == tcp.stats.drops[DropReason.MAX_CLIENTS] == 1
    udp.remove_session(a.session)
    udp.remove_session(a.session)  # idempotent: one slot back, not two
    assert slots.used == 1 and tcp.add_stream_session(("tcp", "192.0.2.5", 7)) is not None
    assert tcp.add_stream_session(("tcp", "192.0.2.5", 8)) is None


def test_connect_freq_initial_counts_every_listener_of_the_server() -> None:
    """connect-freq-initial 3 per 10 s with two UDP listeners: 3 resets answered in all,
    not 3 per socket (6 before: N listeners, N times the reflection budget)."""
    rate = ResetRateLimit(3, 10.0)
    cfg = DemuxConfig(connect_freq_initial=3)
    a, b = (ServerDemux(srv_wrap, cookie_key=COOKIE_KEY, config=cfg, reset_rate=rate) for _ in range(2))
    answered = [len(d.receive_datagram(reset(cli_wrap()), ("192.0.2.9", port), 1.0))
                for port in range(4) for d in (a, b)]
    assert sum(answered) == 3
    assert a.stats.drops[DropReason.RATE_LIMITED] + b.stats.drops[DropReason.RATE_LIMITED] == 5


def test_connect_freq_limits_new_sessions_of_every_listener() -> None:
    """connect-freq 2 10 with two UDP listeners: of 5 returning cookies within 10 s, 2
    become sessions in all (OpenVPN: `frequency_limit_event_allowed` after the cookie); the
    rest are dropped without state, their resets still answered; the next window starts
    afresh. Before, connect-freq was ignored: 5 sessions."""
    rate = ConnectFreq(2, 10.0)
    cfg = DemuxConfig(connect_freq=2, connect_freq_period=10.0)
    a, b = (ServerDemux(srv_wrap, cookie_key=COOKIE_KEY, config=cfg, connect_freq=rate) for _ in range(2))
    made = 0
    for port in range(5):
        d, addr, w, sid = (a, b)[port % 2], ("192.0.2.9", port), cli_wrap(), bytes([port + 1]) * 8
        assert len(d.receive_datagram(reset(w, sid), addr, 1.0)) == 1
        made += len(d.receive_datagram(returning(w, expected_cookie(0, addr, sid), sid=sid), addr, 1.0))
    assert made == 2 and a.session_count + b.session_count == 2
    assert a.stats.drops[DropReason.CONNECT_FREQ] + b.stats.drops[DropReason.CONNECT_FREQ] == 3
    assert connect(a, ("192.0.2.9", 9), now=11.0).peer_id == 1  # a new window


def test_connect_freq_zero_seconds_is_off_and_zero_count_refuses_all() -> None:
    assert all(connect(demux(connect_freq=0, connect_freq_period=0.0), ("192.0.2.9", p)) for p in range(3))
    d, w = demux(connect_freq=0, connect_freq_period=5.0), cli_wrap()
    d.receive_datagram(reset(w), ADDR, 0.0)
    assert d.receive_datagram(returning(w, expected_cookie(0, ADDR)), ADDR, 0.0) == []
    assert d.stats.drops[DropReason.CONNECT_FREQ] == 1


def test_peer_id_is_the_lowest_free_slot() -> None:
    d = demux()
    s = [connect(d, ("192.0.2.1", p)) for p in range(4)]
    assert [x.peer_id for x in s] == [0, 1, 2, 3]
    d.remove_session(s[2].session)
    d.remove_session(s[0].session)
    assert connect(d, ("192.0.2.1", 10)).peer_id == 0
    stream = d.add_stream_session(("tcp", "192.0.2.7", 1))
    assert stream is not None and stream[1] == 2
    assert connect(d, ("192.0.2.1", 11)).peer_id == 4
    assert len({x.session for x in s}) == 4 and stream[0] > s[-1].session  # never reused


def test_stop_accepting_keeps_existing_sessions() -> None:
    d = demux()
    ns = connect(d, ADDR)
    d.stop_accepting()
    assert d.receive_datagram(reset(cli_wrap()), ("192.0.2.1", 2), 0.0) == []
    assert d.stats.drops[DropReason.NOT_ACCEPTING] == 1
    ack = bytes([Opcode.ACK_V1 << 3]) + CLI + b"\x00"
    assert isinstance(only(d.receive_datagram(ack, ADDR, 0.0), Deliver), Deliver)
    # nor can a restarted client replace its old session now
    assert d.receive_datagram(reset(cli_wrap(), sid=b"\x09" * 8), ADDR, 0.0) == []
    assert d.stats.drops[DropReason.NOT_ACCEPTING] == 2
    assert d.add_stream_session(("tcp", 1)) is None
    assert ns.session == 0


# -- data routing and float ---------------------------------------------------------------
def test_data_v2_is_routed_by_peer_id_and_a_new_source_is_a_float_candidate() -> None:
    d = demux()
    a = connect(d, ("192.0.2.1", 1))
    b = connect(d, ("192.0.2.1", 2))
    dl = only(d.receive_datagram(data_v2(b.peer_id), ("192.0.2.1", 2), 1.0), Deliver)
    assert isinstance(dl, Deliver) and (dl.session, dl.float_candidate) == (b.session, False)
    moved = ("198.51.100.4", 7777)
    dl = only(d.receive_datagram(data_v2(a.peer_id), moved, 1.0), Deliver)
    assert isinstance(dl, Deliver) and (dl.session, dl.addr, dl.float_candidate) == (
        a.session,
        moved,
        True,
    )
    # not committed yet: control traffic from the new address is still a stranger's
    assert d.session_for_addr(moved) is None
    assert d.confirm_float(a.session, moved)
    assert d.session_for_addr(moved) == a.session and d.session_for_addr(("192.0.2.1", 1)) is None
    assert d.session_info(a.session) == (a.peer_id, moved)
    dl = only(d.receive_datagram(b"\x20" + a.remote_session_id + b"\x01" * 12, moved, 2.0), Deliver)
    assert isinstance(dl, Deliver) and dl.session == a.session and not dl.float_candidate
    assert d.confirm_float(a.session, moved)  # already there
    assert d.stats.floats_confirmed == 1
    # DATA_V1 and V2 without peer-id go by address
    dl = only(d.receive_datagram(bytes([Opcode.DATA_V1 << 3]) + b"x" * 10, moved, 2.0), Deliver)
    assert isinstance(dl, Deliver) and dl.session == a.session
    dl = only(d.receive_datagram(data_v2(0xFFFFFF), ("192.0.2.1", 2), 2.0), Deliver)
    assert isinstance(dl, Deliver) and dl.session == b.session


def test_float_onto_another_sessions_address_is_refused() -> None:
    d = demux()
    a = connect(d, ("192.0.2.1", 1))
    b = connect(d, ("192.0.2.1", 2))
    dl = only(d.receive_datagram(data_v2(a.peer_id), b.addr, 1.0), Deliver)
    assert isinstance(dl, Deliver) and dl.float_candidate and dl.session == a.session
    assert not d.confirm_float(a.session, b.addr)
    assert d.stats.floats_refused == 1
    assert d.session_info(a.session) == (a.peer_id, a.addr)
    assert d.session_for_addr(b.addr) == b.session
    assert not d.confirm_float(12345, ("x", 1))  # unknown session
    d.remove_session(b.session)
    assert d.confirm_float(a.session, b.addr)  # free now


def test_batch_coalesces_consecutive_datagrams_per_session_and_source() -> None:
    d = demux()
    a = connect(d, ("192.0.2.1", 1))
    b = connect(d, ("192.0.2.1", 2))
    moved = ("192.0.2.1", 3)
    batch = [
        (data_v2(a.peer_id, b"1"), a.addr),
        (data_v2(a.peer_id, b"2"), a.addr),
        (data_v2(a.peer_id, b"3"), moved),
        (data_v2(b.peer_id, b"4"), b.addr),
        (b"", b.addr),
        (data_v2(b.peer_id, b"5"), b.addr),
        (data_v2(a.peer_id, b"6"), a.addr),
    ]
    out = d.receive_datagrams(batch, 1.0)
    shape = [
        (x.session, len(x.datagrams), x.float_candidate) for x in out if isinstance(x, Deliver)
    ]
    # the dropped empty datagram leaves no action behind, so b's two stay together
    assert shape == [(a.session, 2, False), (a.session, 1, True), (b.session, 2, False),
                     (a.session, 1, False)]  # fmt: skip
    assert d.stats.delivered == 6


# -- hostile input ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["forged", "insider", "insider-unlimited"])
def test_10000_spoofed_resets_create_no_state(kind: str) -> None:
    """10,000 resets from random source ports: no table grows and memory stays flat.

    "insider": signed with the tls-auth key, so every one passes the filter (the default
    rate limit answers 100); "-unlimited" lifts the limit so all are answered (worst case).
    "forged": a wrong key, all refused as unauthentic."""
    rng = random.Random(7)
    authentic = kind != "forged"
    d = demux(connect_freq_initial=10**9) if kind == "insider-unlimited" else demux()
    w = cli_wrap() if authentic else TLSAuth(KEY, 0, "SHA256", timestamp=1)
    packets = [
        (reset(w, sid=rng.randbytes(7) + b"\x01"), ("203.0.113.7", rng.randrange(1024, 65536)))
        for _ in range(10_000)
    ]
    d.receive_datagrams(packets[:100], 0.0)  # warm caches, lazily built objects
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        answered = 0
        for i in range(100, 10_000, 100):
            answered += len(d.receive_datagrams(packets[i : i + 100], i / 1000))
        growth = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert d.table_sizes() == (0, 0, 0, 0) and d.session_count == 0
    assert d.stats.sessions_created == 0
    if kind == "insider-unlimited":
        assert answered == 9_900 and d.stats.resets_answered == 10_000
    elif kind == "insider":
        # 100 per 10 s; the run spans t = 0.1 .. 9.9 s, all inside the first period
        assert answered == 0 and d.stats.resets_answered == 100
        assert d.stats.drops[DropReason.RATE_LIMITED] == 9_900
    else:
        assert answered == 0 and d.stats.drops[DropReason.UNAUTHENTIC] == 10_000
    print(f"tracemalloc growth after 9,900 spoofed resets ({kind}): {growth} B")
    assert growth < 16 * 1024


_addrs = st.tuples(st.sampled_from(["192.0.2.1", "2001:db8::1"]), st.integers(0, 65535))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=160), _addrs), max_size=40), st.booleans())
def test_arbitrary_datagrams_never_raise_and_never_create_state(
    batch: list[tuple[bytes, tuple[str, int]]], unwrapped: bool
) -> None:
    d = ServerDemux(no_wrap if unwrapped else srv_wrap, cookie_key=COOKIE_KEY)
    out = d.receive_datagrams(batch, 1.0)
    assert all(isinstance(x, Reply) for x in out)
    assert d.table_sizes() == (0, 0, 0, 0)
    for blob, addr in batch:
        assert all(isinstance(x, Reply) for x in d.receive_datagram(blob, addr, 2.0))
    assert d.table_sizes() == (0, 0, 0, 0)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        DemuxConfig(hand_window=0)
    with pytest.raises(ConfigError):
        DemuxConfig(max_clients=0)
    with pytest.raises(ConfigError):
        DemuxConfig(max_clients=0xFFFFFF)
    with pytest.raises(ConfigError):
        DemuxConfig(connect_freq_initial=0)
    with pytest.raises(ConfigError):
        DemuxConfig(connect_freq=-1, connect_freq_period=1.0)
    with pytest.raises(ConfigError):
        ServerDemux(srv_wrap, cookie_key=b"short")
