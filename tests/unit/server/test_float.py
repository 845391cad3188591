"""Float: a UDP client keeps its session when its source address changes, but only once a
packet from the new address is authentic (`Decryptor.would_accept`, `deliver_udp`)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from trivpn.controlchannel.packet import (
    ControlPacket,
    Opcode,
    parse_control_packet,
    serialize_control_packet,
)
from trivpn.controlchannel.wrap import EARLY_NEG_START, ControlWrap, NoWrap, StaticKey, TLSCrypt
from trivpn.controlchannel.wrapv2 import TLSCryptV2Server, TLSCryptV2ServerKey, wrap_client_key
from trivpn.datachannel.core import DataChannel
from trivpn.packetmuxer.core import PacketMuxer
from trivpn.server.clients import Listening
from trivpn.server.clientsession import ClientSession
from trivpn.server.demux import Deliver, NewSession, Reply, ServerDemux
from trivpn.server.udpdeliver import deliver_udp

KEY2 = bytes((i * 13 + 5) & 0xFF for i in range(256))
OLD = ("192.0.2.1", 40000)
NEW = ("192.0.2.1", 40001)


def channels(cipher: str = "AES-256-GCM", auth: str | None = None) -> tuple[DataChannel, DataChannel]:
    client = DataChannel(cipher=cipher, peer_id=0, auth=auth)
    server = DataChannel(cipher=cipher, peer_id=0, is_server=True, auth=auth)
    client.install_key(0, KEY2, 0.0)
    server.install_key(0, KEY2, 0.0)
    return client, server


def no_wrap(pid: int) -> ControlWrap:
    return NoWrap()


def udp_session(demux: ServerDemux, addr: tuple[str, int], sid: bytes) -> NewSession:
    """A session made the UDP way: reset, stateless reply, the cookie comes back."""
    reset = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, sid, (), None, 0, b"")
    (reply,) = demux.receive_datagram(serialize_control_packet(reset), addr, 5.0)
    assert isinstance(reply, Reply)
    cookie = parse_control_packet(reply.datagram).session_id
    back = ControlPacket(Opcode.CONTROL_V1, 0, sid, (0,), cookie, 1, b"hello")
    (new,) = demux.receive_datagram(serialize_control_packet(back), addr, 5.0)
    assert isinstance(new, NewSession)
    return new


def ip(n: int) -> bytes:
    return b"\x45" + n.to_bytes(4, "big") + bytes(35)


def test_would_accept_changes_nothing_and_refuses_forged_replayed_truncated() -> None:
    for cipher, auth in (("AES-256-GCM", None), ("AES-256-CBC", "SHA256")):
        client, server = channels(cipher, auth)
        first, second = client.encrypt([ip(1), ip(2)], 1.0)
        assert server.rx.decrypt([first], 1.0) == [ip(1)]  # adopts the key table
        stats_before = (server.rx.stats.rx_packets, server.rx.stats.drop_auth, server.rx.stats.drop_replay)
        assert server.rx.would_accept(second, 2.0)
        assert server.rx.would_accept(second, 2.0)  # asking twice changes nothing
        assert not server.rx.would_accept(first, 2.0)  # replayed
        forged = second[:-1] + bytes([second[-1] ^ 1])
        assert not server.rx.would_accept(forged, 2.0)
        assert not server.rx.would_accept(second[:10], 2.0)
        assert not server.rx.would_accept(b"", 2.0)
        assert not server.rx.would_accept(bytes([second[0] + 1]) + second[1:], 2.0)  # unknown key id
        assert (server.rx.stats.rx_packets, server.rx.stats.drop_auth, server.rx.stats.drop_replay) == stats_before
        assert server.rx.decrypt([second], 2.0) == [ip(2)]  # the real decrypt still takes it


class FakeClient:
    """What `deliver_udp` uses of a ClientSession: its address, data channel and inbox."""

    def __init__(
        self, session: int, addr: tuple[str, int], dc: DataChannel, muxer: PacketMuxer | None = None
    ) -> None:
        self.session = session
        self.addr = addr
        link = SimpleNamespace(rx=dc.rx, clock=lambda: 5.0)
        self.stack = SimpleNamespace(data=SimpleNamespace(link=link), muxer=muxer)
        self.inbox: list[bytes] = []

    def deliver(self, datagrams: list[bytes]) -> None:
        self.inbox.extend(datagrams)


def route(sock: Listening, datagram: bytes, addr: tuple[str, int]) -> None:
    for action in sock.demux.receive_datagram(datagram, addr, 5.0):
        assert isinstance(action, Deliver)
        deliver_udp(sock, action, 5.0)


def test_only_an_authentic_fresh_packet_moves_the_session() -> None:
    client_dc, server_dc = channels()
    demux = ServerDemux(no_wrap, cookie_key=b"f" * 32)
    session = udp_session(demux, OLD, b"\x01" * 8).session
    fake = FakeClient(session, OLD, server_dc)
    sock = Listening(demux, sessions={session: cast(ClientSession, fake)})
    p1, p2, p3 = client_dc.encrypt([ip(1), ip(2), ip(3)], 5.0)
    route(sock, p1, OLD)
    assert server_dc.rx.decrypt(fake.inbox, 5.0) == [ip(1)]
    fake.inbox.clear()
    # hostile packets from a new address: delivered (and dropped by the data channel), no float
    for bad in (p1, p2[:-1] + b"\x00", p2[:12], b"\x48\x00\x00\x00" + b"\x00" * 40):
        route(sock, bad, NEW)
    assert demux.session_info(session) == (0, OLD) and fake.addr == OLD
    assert demux.session_for_addr(NEW) is None and demux.stats.floats_confirmed == 0
    assert len(fake.inbox) == 4
    # the real client's next packet from there: the session moves, replies go there
    route(sock, p2, NEW)
    assert demux.session_info(session) == (0, NEW) and fake.addr == NEW
    assert demux.session_for_addr(NEW) == session and demux.session_for_addr(OLD) is None
    assert demux.stats.floats_confirmed == 1
    # a later packet from the new address is no float candidate any more
    actions = demux.receive_datagram(p3, NEW, 5.0)
    assert len(actions) == 1 and isinstance(actions[0], Deliver) and not actions[0].float_candidate


def test_a_float_onto_another_clients_address_is_refused() -> None:
    client_dc, server_dc = channels()
    demux = ServerDemux(no_wrap, cookie_key=b"f" * 32)
    a = udp_session(demux, OLD, b"\x01" * 8).session
    b = udp_session(demux, NEW, b"\x02" * 8).session
    fake = FakeClient(a, OLD, server_dc)
    sock = Listening(demux, sessions={a: cast(ClientSession, fake)})
    (p1,) = client_dc.encrypt([ip(1)], 5.0)
    server_dc.rx.decrypt(client_dc.encrypt([ip(0)], 5.0), 5.0)  # adopt the keys
    # client a's genuine packet arrives from b's address: delivered, but a stays where it is
    route(sock, p1, NEW)
    assert demux.session_info(a) == (0, OLD) and demux.session_for_addr(NEW) == b
    assert demux.stats.floats_refused == 1 and fake.inbox == [p1]


def test_control_packets_float_only_under_a_key_of_that_client() -> None:
    """tls-crypt-v2: the client's own Kc authenticates its control packets, so one from a
    new address (found by the client's session id) may move the session; a shared
    tls-crypt key may not (any client holding it could forge another's packets)."""
    server_key = TLSCryptV2ServerKey(bytes(range(128)))
    kc = StaticKey(bytes(range(1, 256)) + b"\x01")
    wkc = wrap_client_key(server_key, kc)
    demux = ServerDemux(no_wrap, cookie_key=b"f" * 32, tls_crypt_v2=TLSCryptV2Server(server_key, timestamp=1))
    cw = TLSCrypt(kc, server=False, timestamp=7, initial_packet_id=EARLY_NEG_START + 1)
    sid = b"\x07" * 8
    reset = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V3, 0, sid, (), None, 0, b"")
    (reply,) = demux.receive_datagram(cw.wrap(serialize_control_packet(reset), 5.0) + wkc, OLD, 5.0)
    assert isinstance(reply, Reply)
    cookie = parse_control_packet(TLSCrypt(kc, server=False, timestamp=7).unwrap(reply.datagram, 5.0)).session_id

    def control(message_id: int, opcode: Opcode = Opcode.CONTROL_V1) -> bytes:
        pkt = ControlPacket(opcode, 0, sid, (0,), cookie, message_id, b"tls")
        wire = cw.wrap(serialize_control_packet(pkt), 5.0)
        return wire + wkc if opcode is Opcode.CONTROL_WKC_V1 else wire

    (new,) = demux.receive_datagram(control(1, Opcode.CONTROL_WKC_V1), OLD, 5.0)
    assert isinstance(new, NewSession)
    muxer = PacketMuxer.server_after_cookie(new.wrap, cookie, sid, client_wkc=new.client_wkc)
    muxer.receive_datagrams([new.first_packet], 5.0)
    _, server_dc = channels()
    fake = FakeClient(new.session, OLD, server_dc, muxer)
    sock = Listening(demux, sessions={new.session: cast(ClientSession, fake)})
    genuine = control(2)
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])
    other_sid = genuine[:1] + b"\x08" * 8 + genuine[9:]
    for bad in (forged, other_sid, new.first_packet):  # forged, unknown sid, replayed
        route_any(sock, bad, NEW)
    assert demux.session_info(new.session) == (0, OLD)
    route_any(sock, genuine, NEW)
    assert demux.session_info(new.session) == (0, NEW) and fake.addr == NEW
    # the session itself still takes the packet (nothing was recorded by the check)
    assert len(muxer.receive_datagrams([genuine], 5.0)[1]) == 1
    # a shared tls-crypt key never floats a session through the control channel
    shared = PacketMuxer.server_after_cookie(TLSCrypt(kc, server=True, timestamp=1), cookie, sid)
    assert not shared.authenticates(control(3), 5.0)


def route_any(sock: Listening, datagram: bytes, addr: tuple[str, int]) -> None:
    for action in sock.demux.receive_datagram(datagram, addr, 5.0):
        if isinstance(action, Deliver):
            deliver_udp(sock, action, 5.0)
