"""tls-crypt-v2 through the server: the demux's stateless cookie flow with a WKc, the
session muxer stripping the WKc, and trivpn's own client against the running Server."""

from __future__ import annotations

import base64
import dataclasses
import struct

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import answer_echo, client_profile, ping, running_server, server_config

from trivpn import api
from trivpn.controlchannel.packet import (
    ControlPacket,
    Opcode,
    parse_control_packet,
    serialize_control_packet,
)
from trivpn.controlchannel.wrap import EARLY_NEG_START, StaticKey, TLSCrypt
from trivpn.controlchannel.wrapv2 import TLSCryptV2Server, TLSCryptV2ServerKey, wrap_client_key
from trivpn.errors import RemoteProtocolError
from trivpn.packetmuxer.core import PacketMuxer
from trivpn.profile.profile import parse_profile
from trivpn.server.demux import (
    EARLY_NEG_RESEND_WKC,
    DemuxConfig,
    DropReason,
    NewSession,
    Reply,
    ServerDemux,
)
from trivpn.server.demux_types import DemuxAction
from trivpn.server.tcpv2 import open_first_packet

SERVER_KEY = TLSCryptV2ServerKey(bytes(range(7, 135)))
KC = StaticKey(bytes((i * 7) & 0xFF for i in range(256)))
WKC = wrap_client_key(SERVER_KEY, KC, b"\x00tenant-a")
CLI = bytes.fromhex("2222222222222222")
ADDR = ("192.0.2.7", 41000)


def unused_factory(pid: int) -> TLSCrypt:
    raise AssertionError("a tls-crypt-v2 demux never uses the server-wide wraps")


def v2_demux(**cfg: int) -> ServerDemux:
    return ServerDemux(
        unused_factory, cookie_key=b"v" * 32, config=DemuxConfig(**cfg),
        tls_crypt_v2=TLSCryptV2Server(SERVER_KEY, timestamp=1000),
    )


def client_wrap(early_neg: bool = True) -> TLSCrypt:
    return TLSCrypt(KC, server=False, timestamp=900, initial_packet_id=EARLY_NEG_START + 1 if early_neg else 1)


def v3_reset(w: TLSCrypt, wkc: bytes = WKC, sid: bytes = CLI) -> bytes:
    pkt = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V3, 0, sid, (), None, 0, b"")
    return w.wrap(serialize_control_packet(pkt), 0.0) + wkc


def wkc_control(w: TLSCrypt, cookie: bytes, payload: bytes = b"hello", wkc: bytes = WKC) -> bytes:
    pkt = ControlPacket(Opcode.CONTROL_WKC_V1, 0, CLI, (0,), cookie, 1, payload)
    return w.wrap(serialize_control_packet(pkt), 0.0) + wkc


def one(actions: list[DemuxAction]) -> DemuxAction:
    assert len(actions) == 1, actions
    return actions[0]


def handshake(d: ServerDemux, w: TLSCrypt) -> tuple[bytes, NewSession]:
    rep = one(d.receive_datagram(v3_reset(w), ADDR, 1.0))
    assert isinstance(rep, Reply)
    reply = parse_control_packet(client_wrap().unwrap(rep.datagram, 1.0))
    ns = one(d.receive_datagram(wkc_control(w, reply.session_id), ADDR, 2.0))
    assert isinstance(ns, NewSession)
    return reply.session_id, ns


def test_early_negotiation_reset_is_answered_statelessly_with_resend_wkc() -> None:
    d = v2_demux()
    rep = one(d.receive_datagram(v3_reset(client_wrap()), ADDR, 1.0))
    assert isinstance(rep, Reply) and rep.addr == ADDR
    pkt = parse_control_packet(client_wrap().unwrap(rep.datagram, 1.0))  # keyed with Kc
    assert pkt.opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2
    assert (pkt.acks, pkt.remote_session_id, pkt.message_id) == ((0,), CLI, 0)
    assert pkt.payload == EARLY_NEG_RESEND_WKC == bytes.fromhex("000100020001")
    assert struct.unpack("!I", rep.datagram[9:13])[0] == 1  # our replay ids start at 1
    assert d.table_sizes() == (0, 0, 0, 0) and d.stats.resets_answered == 1


def test_returning_wkc_control_creates_a_session_keyed_by_the_client_key() -> None:
    d = v2_demux()
    w = client_wrap()
    cookie, ns = handshake(d, w)
    assert ns.local_session_id == cookie and ns.remote_session_id == CLI and ns.peer_id == 0
    assert ns.client_key == KC.data and ns.client_wkc == WKC
    # the session's muxer strips the WKc and sees the P_CONTROL_V1 it carries
    mux = PacketMuxer.server_after_cookie(ns.wrap, cookie, CLI, client_wkc=ns.client_wkc)
    data, control = mux.receive_datagrams([ns.first_packet], 2.0)
    assert data == [] and len(control) == 1
    assert control[0].opcode is Opcode.CONTROL_V1 and control[0].payload == b"hello"
    # its answers are keyed with Kc and continue after the stateless reply's packet-id 1
    out = ns.wrap.wrap(serialize_control_packet(ControlPacket(Opcode.ACK_V1, 0, cookie, (1,), CLI)), 3.0)
    assert struct.unpack("!I", out[9:13])[0] == 2
    assert parse_control_packet(w_server_view().unwrap(out, 3.0)).acks == (1,)
    # a retransmission with another trailer is refused by the session, not passed up
    again = wkc_control(w, cookie, wkc=wrap_client_key(SERVER_KEY, KC, b"\x00other"))
    assert mux.receive_datagrams([again], 3.0) == ([], []) and mux.stats.drop_unauthentic == 1


def w_server_view() -> TLSCrypt:
    """The client's receive side, for the server's session packets (replay state fresh)."""
    return client_wrap()


def test_bad_client_keys_and_other_first_packets_leave_no_state() -> None:
    d = v2_demux()
    w = client_wrap()
    good = v3_reset(w)
    other_server = wrap_client_key(TLSCryptV2ServerKey(b"\x01" * 128), KC)
    flipped = WKC[:40] + bytes([WKC[40] ^ 1]) + WKC[41:]
    wrong_kc = wrap_client_key(SERVER_KEY, StaticKey(b"\x05" * 256))
    plain_reset = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, CLI, (), None, 0, b"")
    cases: list[tuple[bytes, DropReason]] = [
        (good[: -len(WKC)], DropReason.BAD_CLIENT_KEY),  # no WKc at all
        (good[:-5], DropReason.BAD_CLIENT_KEY),  # truncated
        (good[:-2] + b"\xff\xff", DropReason.BAD_CLIENT_KEY),  # absurd length
        (v3_reset(w, other_server), DropReason.BAD_CLIENT_KEY),  # sealed by another server
        (v3_reset(w, flipped), DropReason.BAD_CLIENT_KEY),
        (v3_reset(w, wrong_kc), DropReason.UNAUTHENTIC),  # a real WKc, the packet not made with it
        (v3_reset(client_wrap(early_neg=False)), DropReason.NO_EARLY_NEGOTIATION),
        (w.wrap(serialize_control_packet(plain_reset), 0.0), DropReason.NEEDS_CLIENT_KEY),
        (wkc_control(w, b"\x09" * 8), DropReason.BAD_COOKIE),
    ]
    for blob, reason in cases:
        before = d.stats.drops[reason]
        assert d.receive_datagram(blob, ADDR, 1.0) == [], reason
        assert d.stats.drops[reason] == before + 1, reason
    assert d.table_sizes() == (0, 0, 0, 0) and d.stats.resets_answered == 0


def test_a_flood_of_wkc_resets_from_many_ports_creates_nothing() -> None:
    d = v2_demux()
    w = client_wrap()
    for port in range(2000):
        d.receive_datagram(v3_reset(w), ("192.0.2.7", 1024 + port), port / 1000)
    assert d.table_sizes() == (0, 0, 0, 0) and d.session_count == 0
    assert d.stats.resets_answered == 100 and d.stats.drops[DropReason.RATE_LIMITED] == 1900


def client_key_text(kc: StaticKey, wkc: bytes) -> str:
    body = base64.b64encode(kc.data + wkc).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join(
        ["-----BEGIN OpenVPN tls-crypt-v2 client key-----", *lines, "-----END OpenVPN tls-crypt-v2 client key-----"]
    )


def server_key_text(key: TLSCryptV2ServerKey) -> str:
    body = base64.b64encode(key.data).decode()
    return "\n".join(
        ["-----BEGIN OpenVPN tls-crypt-v2 server key-----", body[:64], body[64:128], body[128:],
         "-----END OpenVPN tls-crypt-v2 server key-----", ""]
    )


def test_a_tcp_first_packet_is_opened_and_checked() -> None:
    ctx = TLSCryptV2Server(SERVER_KEY, timestamp=1000)
    good = v3_reset(client_wrap())
    key = open_first_packet(good, ctx, 1.0)
    assert key.key == KC.data and key.wkc == WKC
    mux = PacketMuxer(key.wraps(1), b"\x05" * 8, is_server=True, client_wkc=key.wkc)
    data, control = mux.receive_datagrams([good], 1.0)
    assert (data, control) == ([], []) and mux.answer_owed and mux.remote_session_id == CLI
    (answer,) = mux.datagrams_to_send(1.0)
    assert parse_control_packet(client_wrap().unwrap(answer, 1.0)).opcode is Opcode.CONTROL_HARD_RESET_SERVER_V2
    plain_reset = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, CLI, (), None, 0, b"")
    for bad in (
        b"",
        client_wrap().wrap(serialize_control_packet(plain_reset), 0.0),  # not V3
        good[: -len(WKC)],  # no key
        v3_reset(client_wrap(), wrap_client_key(TLSCryptV2ServerKey(b"\x02" * 128), KC)),  # not ours
        v3_reset(client_wrap(), wrap_client_key(SERVER_KEY, StaticKey(b"\x03" * 256))),  # another Kc
        bytes([good[0] | 1]) + good[1:],  # key id 1
    ):
        with pytest.raises(RemoteProtocolError):
            open_first_packet(bad, ctx, 1.0)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_trivpn_client_with_tls_crypt_v2_through_the_server(proto: str) -> None:
    pki = shared_pki()
    cfg = dataclasses.replace(server_config(pki, protos=(proto,)), tls_crypt=None,
                              tls_crypt_v2=server_key_text(SERVER_KEY))
    profile = client_profile(pki, 0, proto)
    seen: list[bytes] = []
    with trio.fail_after(30):
        async with running_server(cfg) as (server, tun), trio.open_nursery() as nursery:
            nursery.start_soon(answer_echo, tun, seen)
            port = server.addresses[0][1]
            text = profile.replace(f" 0 {proto}", f" {port} {proto}").split("<tls-crypt>")[0]
            text += f"<tls-crypt-v2>\n{client_key_text(KC, WKC)}\n</tls-crypt-v2>\n"
            async with api.connect(parse_profile(text), reconnect=False) as tunnel:
                assert tunnel.settings.ifconfig_local == "10.8.0.2"
                for seq in range(3):
                    await ping(tunnel, "10.8.0.2", "10.8.0.1", seq)
                (client,) = server.clients.values()
                assert client.stack.muxer.client_wkc == WKC
            nursery.cancel_scope.cancel()
