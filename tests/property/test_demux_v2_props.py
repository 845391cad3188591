"""Property: whatever a tls-crypt-v2 server's demultiplexer is sent without a returning
cookie — genuine client resets, mutated ones, forged wrapped keys, garbage — it raises
nothing, creates no session and keeps no per-client state."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trivpn.controlchannel.packet import ControlPacket, Opcode, serialize_control_packet
from trivpn.controlchannel.wrap import EARLY_NEG_START, StaticKey, TLSCrypt
from trivpn.controlchannel.wrapv2 import TLSCryptV2Server, TLSCryptV2ServerKey, wrap_client_key
from trivpn.server.demux import DemuxConfig, NewSession, Reply, ServerDemux

SERVER_KEY = TLSCryptV2ServerKey(bytes(range(3, 131)))
KC = StaticKey(bytes((5 * i + 1) & 0xFF for i in range(256)))
WKC = wrap_client_key(SERVER_KEY, KC, b"\x01" + bytes(8))


def _genuine(sid: bytes, opcode: Opcode, cookie: bytes | None) -> bytes:
    w = TLSCrypt(KC, server=False, timestamp=77, initial_packet_id=EARLY_NEG_START + 1)
    if cookie is None:
        pkt = ControlPacket(opcode, 0, sid, (), None, 0, b"")
    else:
        pkt = ControlPacket(opcode, 0, sid, (0,), cookie, 1, b"hello")
    return w.wrap(serialize_control_packet(pkt), 0.0) + WKC


def _mutate(data: bytes, how: int, at: int, byte: int) -> bytes:
    i = at % max(1, len(data))
    if how == 0:
        return data
    if how == 1:
        return data[:i]
    if how == 2:
        return data[:i] + bytes([data[i] ^ (byte or 1)]) + data[i + 1 :] if data else b"\x00"
    return data + bytes([byte]) * (at % 40)


datagrams = st.one_of(
    st.builds(
        lambda sid, kind, cookie, how, at, byte: _mutate(
            _genuine(sid, kind, cookie if kind is Opcode.CONTROL_WKC_V1 else None), how, at, byte
        ),
        st.binary(min_size=8, max_size=8),
        st.sampled_from([Opcode.CONTROL_HARD_RESET_CLIENT_V3, Opcode.CONTROL_WKC_V1]),
        st.binary(min_size=8, max_size=8),  # a guessed cookie
        st.integers(0, 3),
        st.integers(0, 2000),
        st.integers(0, 255),
    ),
    st.binary(max_size=1500),
)


@given(st.lists(st.tuples(datagrams, st.integers(1, 65535)), max_size=40))
def test_no_state_without_a_returning_cookie(batch: list[tuple[bytes, int]]) -> None:
    d = ServerDemux(
        lambda pid: TLSCrypt(KC, server=True, timestamp=1),  # never used by a v2 demux
        cookie_key=b"p" * 32,
        config=DemuxConfig(connect_freq_initial=1000),
        tls_crypt_v2=TLSCryptV2Server(SERVER_KEY, timestamp=1),
    )
    actions = d.receive_datagrams([(data, ("198.51.100.7", port)) for data, port in batch], 3.0)
    assert all(isinstance(a, Reply) for a in actions)
    assert not any(isinstance(a, NewSession) for a in actions)
    assert d.table_sizes() == (0, 0, 0, 0) and d.session_count == 0
