"""Hypothesis properties of the data channel core: replay safety, integrity, robustness.

Example counts come from the active profile (tests/conftest.py): 100 per test in
`trivpn-ci`, 2,000 with TRIVPN_HYPOTHESIS_PROFILE=trivpn-thorough; nothing is pinned here.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trivpn.datachannel.core import Compression, DataChannel
from trivpn.datachannel.crypto import SUPPORTED_AEAD

KEY2 = bytes((i * 13 + 1) & 0xFF for i in range(256))

ciphers = st.sampled_from(SUPPORTED_AEAD)
peer_ids = st.one_of(st.none(), st.integers(0, 0xFFFFFF))
compressions = st.sampled_from(list(Compression))


def make_pair(
    cipher: str, peer_id: int | None, compression: Compression = Compression.NONE
) -> tuple[DataChannel, DataChannel]:
    client = DataChannel(cipher=cipher, peer_id=peer_id, compression=compression)
    server = DataChannel(cipher=cipher, is_server=True, compression=compression)
    client.install_key(0, KEY2, 0.0)
    server.install_key(0, KEY2, 0.0)
    return client, server


@given(
    cipher=ciphers,
    peer_id=peer_ids,
    count=st.integers(1, 100),
    data=st.data(),
)
def test_each_packet_accepted_at_most_once(
    cipher: str, peer_id: int | None, count: int, data: st.DataObject
) -> None:
    client, server = make_pair(cipher, peer_id)
    payloads = [b"\x45" + i.to_bytes(2, "big") for i in range(count)]
    wires = client.encrypt(payloads, 0.0)
    order = data.draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=3 * count))
    batch_cuts = data.draw(st.lists(st.integers(0, len(order)), max_size=5))
    cuts = sorted({0, len(order), *batch_cuts})
    received: list[bytes] = []
    for start, end in zip(cuts, cuts[1:], strict=False):
        received += server.decrypt([wires[i] for i in order[start:end]], 1.0)
    assert len(received) == len(set(received))  # at most once
    assert set(received) <= set(payloads)
    assert received[0] == payloads[order[0]]  # the first packet is always fresh
    # a packet above everything seen so far is never refused
    highest = -1
    for i in order:
        if i > highest:
            assert payloads[i] in received
            highest = i
    s = server.stats
    assert s.rx_packets + s.drop_replay == len(order)
    assert s.drop_auth == 0


@given(
    cipher=ciphers,
    peer_id=peer_ids,
    compression=compressions,
    payload=st.binary(min_size=1, max_size=200),
    data=st.data(),
)
def test_any_bit_flip_rejected(
    cipher: str, peer_id: int | None, compression: Compression, payload: bytes, data: st.DataObject
) -> None:
    client, server = make_pair(cipher, peer_id, compression)
    (wire,) = client.encrypt([payload], 0.0)
    bit = data.draw(st.integers(0, 8 * len(wire) - 1))
    bad = bytearray(wire)
    bad[bit // 8] ^= 1 << (bit % 8)
    assert server.decrypt([bytes(bad)], 0.0) == []
    assert server.stats.rx_packets == 0
    assert server.last_received == 0.0
    assert server.decrypt([wire], 1.0) == [payload]


@given(
    cipher=ciphers,
    compression=compressions,
    packets=st.lists(
        st.one_of(
            st.binary(max_size=80),
            # bytes that look like data packets for key 0, to get past the cheap checks
            st.builds(
                lambda b0, rest: bytes([b0]) + rest,
                st.sampled_from([0x30, 0x48]),
                st.binary(max_size=80),
            ),
        ),
        max_size=8,
    ),
)
def test_arbitrary_bytes_never_raise(
    cipher: str, compression: Compression, packets: list[bytes]
) -> None:
    client, _ = make_pair(cipher, 0, compression)
    assert client.decrypt(packets, 0.0) == []
    s = client.stats
    assert (
        s.drop_malformed + s.drop_auth + s.drop_replay + s.drop_no_key + s.drop_compression
        == len(packets)
    )
    assert not client.peer_exited
