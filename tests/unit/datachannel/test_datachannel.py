"""Unit tests of the sans-IO data channel (trivpn.datachannel.crypto / .core).

Reference packets are built here with `cryptography` directly from the documented layout
(reference §4.2, §6.2), independently of the core, and the core must produce and accept
exactly those bytes.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from trivpn.datachannel.core import (
    OCC_EXIT,
    OCC_MAGIC,
    PACKET_ID_MAX,
    PACKET_ID_WRAP_TRIGGER,
    PING_MAGIC,
    Compression,
    DataChannel,
)
from trivpn.datachannel.crypto import (
    SUPPORTED_AEAD,
    DirectionKeys,
    make_cipher,
    normalize_cipher_name,
    split_key2,
)
from trivpn.errors import ConfigError, LocalProtocolError

KEY2 = bytes(range(256))
KEY2_B = bytes((i * 7 + 3) & 0xFF for i in range(256))
KEY_LEN = {"AES-128-GCM": 16, "AES-192-GCM": 24, "AES-256-GCM": 32, "CHACHA20-POLY1305": 32}
IPV4 = bytes.fromhex("450000281234000040110000c0a80001c0a80002") + b"payload!" * 3
IPV6 = bytes.fromhex("6000000000083a40") + bytes(32) + b"\x80\x00\x00\x00\x00\x01\x00\x01"


def ref_packet(
    cipher: str,
    payload: bytes,
    *,
    pid: int,
    from_server: bool,
    key_id: int = 0,
    peer_id: int | None = 0,
    key2: bytes = KEY2,
) -> bytes:
    """An AEAD data packet built straight from reference §6.2 (not using the core)."""
    base = 128 if from_server else 0  # keys[1] is the server's sending half
    key = key2[base : base + KEY_LEN[cipher]]
    implicit_iv = key2[base + 64 : base + 72]
    aead = ChaCha20Poly1305(key) if cipher.startswith("CHACHA") else AESGCM(key)
    pid_b = pid.to_bytes(4, "big")
    if peer_id is None:
        hdr = bytes([(6 << 3) | key_id])
        ad = pid_b
    else:
        hdr = ((((9 << 3) | key_id) << 24) | peer_id).to_bytes(4, "big")
        ad = hdr + pid_b
    sealed = aead.encrypt(pid_b + implicit_iv, payload, ad)
    return hdr + pid_b + sealed[-16:] + sealed[:-16]


def ref_open(
    cipher: str, wire: bytes, *, from_server: bool, v2: bool = True, key2: bytes = KEY2
) -> bytes:
    """Decrypt a packet with `cryptography` directly (layout of reference §6.2)."""
    base = 128 if from_server else 0
    key = key2[base : base + KEY_LEN[cipher]]
    implicit_iv = key2[base + 64 : base + 72]
    aead = ChaCha20Poly1305(key) if cipher.startswith("CHACHA") else AESGCM(key)
    off = 4 if v2 else 1
    pid_b = wire[off : off + 4]
    ad = wire[: off + 4] if v2 else pid_b
    tag = wire[off + 4 : off + 20]
    return aead.decrypt(pid_b + implicit_iv, wire[off + 20 :] + tag, ad)


def pair(
    cipher: str = "AES-256-GCM",
    *,
    peer_id: int | None = 0,
    compression: Compression = Compression.NONE,
    ping_interval: float = 0.0,
    now: float = 0.0,
) -> tuple[DataChannel, DataChannel]:
    client = DataChannel(
        cipher=cipher, peer_id=peer_id, compression=compression, ping_interval=ping_interval
    )
    server = DataChannel(
        cipher=cipher,
        is_server=True,
        peer_id=peer_id,
        compression=compression,
        ping_interval=ping_interval,
    )
    client.install_key(0, KEY2, now)
    server.install_key(0, KEY2, now)
    return client, server


# -- crypto.py ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("aes-256-gcm", "AES-256-GCM"),
        ("AES-128-GCM", "AES-128-GCM"),
        ("Aes-192-Gcm", "AES-192-GCM"),
        ("chacha20-poly1305", "CHACHA20-POLY1305"),
    ],
)
def test_normalize_cipher_name(given: str, canonical: str) -> None:
    assert normalize_cipher_name(given) == canonical
    assert canonical in SUPPORTED_AEAD


@pytest.mark.parametrize("name", ["BF-CBC", "bf-cbc", "DES-EDE3-CBC", "CAST5-CBC", "DES-CBC"])
def test_64bit_block_ciphers_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="64-bit block") as info:
        normalize_cipher_name(name)
    assert name in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["AES-256-CBC", "none", "AES-256-XTS", "", "rot13"])
def test_other_unsupported_ciphers_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_cipher_name(name)
    if name:
        assert name in str(info.value)
    with pytest.raises(ConfigError):
        DataChannel(cipher=name)
    with pytest.raises(ConfigError):
        make_cipher(name, bytes(32))


@pytest.mark.parametrize("cipher", SUPPORTED_AEAD)
def test_split_key2_client_and_server(cipher: str) -> None:
    n = KEY_LEN[cipher]
    enc, dec = split_key2(KEY2, cipher, is_server=False)
    assert enc == DirectionKeys(KEY2[0:n], KEY2[64:72])
    assert dec == DirectionKeys(KEY2[128 : 128 + n], KEY2[192:200])
    s_enc, s_dec = split_key2(KEY2, cipher.lower(), is_server=True)
    assert s_enc == dec and s_dec == enc
    assert len(enc.implicit_iv) == 8


def test_split_key2_rejects_wrong_length() -> None:
    with pytest.raises(LocalProtocolError):
        split_key2(KEY2[:255], "AES-256-GCM", is_server=False)
    with pytest.raises(LocalProtocolError):
        make_cipher("AES-128-GCM", bytes(32))


def test_make_cipher_types() -> None:
    assert isinstance(make_cipher("aes-128-gcm", bytes(16)), AESGCM)
    assert isinstance(make_cipher("CHACHA20-POLY1305", bytes(32)), ChaCha20Poly1305)


# -- OpenVPN-compatible bytes ------------------------------------------------------------------


@pytest.mark.parametrize("cipher", SUPPORTED_AEAD)
def test_client_ping_matches_reference_layout(cipher: str) -> None:
    client = DataChannel(cipher=cipher, peer_id=0, ping_interval=10)
    client.install_key(0, KEY2, 100.0)
    (wire,) = client.packets_to_send(110.0)
    # reference §6.2: a V2 client ping is 40 bytes and starts 48000000 00000001
    assert len(wire) == 40
    assert wire[:8] == bytes.fromhex("4800000000000001")
    assert wire == ref_packet(cipher, PING_MAGIC, pid=1, from_server=False)


@pytest.mark.parametrize("cipher", SUPPORTED_AEAD)
@pytest.mark.parametrize("peer_id", [None, 0, 5, 0xABCDEF])
def test_encrypt_matches_reference(cipher: str, peer_id: int | None) -> None:
    client = DataChannel(cipher=cipher, peer_id=peer_id)
    client.install_key(3, KEY2, 0.0)
    wires = client.encrypt([IPV4, IPV6, IPV4], 1.0)
    assert wires == [
        ref_packet(cipher, IPV4, pid=1, from_server=False, key_id=3, peer_id=peer_id),
        ref_packet(cipher, IPV6, pid=2, from_server=False, key_id=3, peer_id=peer_id),
        ref_packet(cipher, IPV4, pid=3, from_server=False, key_id=3, peer_id=peer_id),
    ]
    if peer_id is None:
        assert wires[0][0] == 0x33
    else:
        assert wires[0][:4] == ((0x4B << 24) | peer_id).to_bytes(4, "big")


@pytest.mark.parametrize("cipher", SUPPORTED_AEAD)
@pytest.mark.parametrize("peer_id", [None, 7])
def test_decrypt_accepts_reference_packets(cipher: str, peer_id: int | None) -> None:
    client = DataChannel(cipher=cipher, peer_id=peer_id)
    client.install_key(1, KEY2, 0.0)
    wires = [
        ref_packet(cipher, IPV4, pid=1, from_server=True, key_id=1, peer_id=peer_id),
        ref_packet(cipher, PING_MAGIC, pid=2, from_server=True, key_id=1, peer_id=peer_id),
        ref_packet(cipher, IPV6, pid=3, from_server=True, key_id=1, peer_id=peer_id),
    ]
    assert client.decrypt(wires, 5.0) == [IPV4, IPV6]
    assert client.stats.rx_pings == 1
    assert client.last_received == 5.0
    # the client's own direction must not decrypt as the server's
    own = ref_packet(cipher, IPV4, pid=4, from_server=False, key_id=1, peer_id=peer_id)
    assert client.decrypt([own], 6.0) == []
    assert client.stats.drop_auth == 1


def test_v1_and_v2_both_accepted_whatever_we_send() -> None:
    client = DataChannel(cipher="AES-128-GCM", peer_id=None)
    client.install_key(0, KEY2, 0.0)
    v2 = ref_packet("AES-128-GCM", IPV4, pid=1, from_server=True, peer_id=99)
    v1 = ref_packet("AES-128-GCM", IPV6, pid=2, from_server=True, peer_id=None)
    assert client.decrypt([v2, v1], 0.0) == [IPV4, IPV6]


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("cipher", SUPPORTED_AEAD)
@pytest.mark.parametrize("peer_id", [None, 0x123456])
@pytest.mark.parametrize("compression", list(Compression))
def test_round_trip(cipher: str, peer_id: int | None, compression: Compression) -> None:
    client, server = pair(cipher, peer_id=peer_id, compression=compression, ping_interval=5.0)
    payloads = [IPV4, IPV6, b"\x50hello", b"\x50", b"x", b"\xfa\xfb", bytes(1500)]
    up = client.encrypt(payloads, 1.0)
    assert len(up) == len(payloads)
    assert server.decrypt(up, 1.0) == payloads
    down = server.encrypt(payloads[::-1], 1.0)
    assert client.decrypt(down, 1.0) == payloads[::-1]
    assert client.stats.tx_packets == len(payloads)
    assert client.stats.tx_bytes == sum(map(len, payloads))
    assert server.stats.rx_packets == len(payloads)
    assert server.stats.rx_bytes == sum(map(len, payloads))
    drops = server.stats
    assert (drops.drop_auth, drops.drop_malformed, drops.drop_compression) == (0, 0, 0)
    # pings and exit notifications survive the framing too
    assert server.decrypt(client.packets_to_send(7.0), 7.0) == []
    assert server.stats.rx_pings == 1
    assert server.decrypt([client.exit_packet(2.0)], 2.0) == []
    assert server.peer_exited


def test_empty_packets_are_not_sent() -> None:
    client, _ = pair()
    assert client.encrypt([b"", IPV4, b""], 0.0) == [
        ref_packet("AES-256-GCM", IPV4, pid=1, from_server=False)
    ]


# -- compression framing on the wire ---------------------------------------------------------


@pytest.mark.parametrize(
    ("compression", "payload", "plaintext"),
    [
        (Compression.NONE, IPV4, IPV4),
        (Compression.LZO_NO, IPV4, b"\xfa" + IPV4),
        (Compression.STUB, IPV4, b"\xfb" + IPV4[1:] + IPV4[:1]),
        (Compression.STUB, b"x", b"\xfbx"),
        (Compression.STUB_V2, IPV4, IPV4),
        (Compression.STUB_V2, b"\x50abc", b"\x50\x00\x50abc"),
        (Compression.LZO_NO, PING_MAGIC, b"\xfa" + PING_MAGIC),
        (Compression.STUB, PING_MAGIC, b"\xfb" + PING_MAGIC[1:] + PING_MAGIC[:1]),
    ],
)
def test_outgoing_framing(compression: Compression, payload: bytes, plaintext: bytes) -> None:
    client, _ = pair(compression=compression)
    (wire,) = client.encrypt([payload], 0.0)
    assert ref_open("AES-256-GCM", wire, from_server=False) == plaintext


@pytest.mark.parametrize(
    ("compression", "plaintext", "expected"),
    [
        (Compression.LZO_NO, b"\xfa" + IPV4, [IPV4]),
        (Compression.LZO_NO, IPV4, []),  # no framing byte: refused
        (Compression.LZO_NO, b"\x66" + IPV4, []),  # real LZO: cannot decompress
        (Compression.STUB, b"\xfb" + IPV4[1:] + IPV4[:1], [IPV4]),
        (Compression.STUB, b"\xfa" + IPV4, []),
        (Compression.STUB_V2, IPV6, [IPV6]),
        (Compression.STUB_V2, b"\x50\x00\x50zz", [b"\x50zz"]),
        (Compression.STUB_V2, b"\x50\x0a\x50zz", [b"\x50zz"]),  # upstream's encoder oddity
        (Compression.STUB_V2, b"\x50\x01lz4data", []),  # lz4-v2: cannot decompress
        (Compression.STUB_V2, b"\x50", []),
    ],
)
def test_incoming_unframing(
    compression: Compression, plaintext: bytes, expected: list[bytes]
) -> None:
    client, _ = pair(compression=compression)
    wire = ref_packet("AES-256-GCM", plaintext, pid=1, from_server=True)
    assert client.decrypt([wire], 3.0) == expected
    assert client.stats.drop_compression == (0 if expected else 1)
    assert client.last_received == 3.0  # authentic even when the framing is bad


# -- tampering, malformed input --------------------------------------------------------------


@pytest.mark.parametrize("peer_id", [None, 0x010203])
def test_any_tampered_byte_is_rejected(peer_id: int | None) -> None:
    client, server = pair(peer_id=peer_id)
    (wire,) = client.encrypt([IPV4], 0.0)
    for i in range(len(wire)):
        bad = bytearray(wire)
        bad[i] ^= 0x01
        assert server.decrypt([bytes(bad)], 0.0) == [], i
    s = server.stats
    assert s.rx_packets == 0
    assert s.drop_auth + s.drop_no_key + s.drop_malformed + s.drop_replay == len(wire)
    assert s.drop_no_key == 1  # the key-id bit of the first byte
    assert s.drop_replay == 1  # the low pid bit: id 1 becomes the never-valid id 0
    assert server.last_received == 0.0
    # the untouched packet is still fresh: failed forgeries did not advance the window
    assert server.decrypt([wire], 1.0) == [IPV4]


@pytest.mark.parametrize("region", ["header", "pid", "tag", "ciphertext"])
def test_tamper_regions(region: str) -> None:
    client, server = pair(peer_id=0x000042)
    (wire,) = client.encrypt([IPV4], 0.0)
    index = {"header": 3, "pid": 7, "tag": 12, "ciphertext": 30}[region]
    bad = bytearray(wire)
    bad[index] ^= 0x80
    assert server.decrypt([bytes(bad)], 0.0) == []
    assert server.stats.drop_auth == 1


def test_malformed_and_foreign_packets_dropped() -> None:
    client, server = pair()
    (wire,) = client.encrypt([IPV4], 0.0)
    junk = [
        b"",
        b"\x48",
        wire[:23],  # one byte short of a V2 packet with empty ciphertext
        bytes([0x30]) + bytes(19),  # one byte short of a V1 packet
        b"\x20" + wire[1:],  # P_CONTROL_V1 opcode
        b"\x00" * 40,
    ]
    assert server.decrypt(junk, 0.0) == []
    assert server.stats.drop_malformed == len(junk)
    assert server.decrypt([b"\x49" + wire[1:]], 0.0) == []  # key id 1 is not installed
    assert server.stats.drop_no_key == 1


def test_no_key_installed() -> None:
    dc = DataChannel(cipher="AES-256-GCM")
    assert not dc.ready
    assert dc.get_timer() is None
    assert dc.decrypt([ref_packet("AES-256-GCM", IPV4, pid=1, from_server=True)], 0.0) == []
    assert dc.stats.drop_no_key == 1
    with pytest.raises(LocalProtocolError):
        dc.encrypt([IPV4], 0.0)
    with pytest.raises(LocalProtocolError):
        dc.exit_packet(0.0)
    assert dc.packets_to_send(100.0) == []


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="peer-id"):
        DataChannel(cipher="AES-256-GCM", peer_id=1 << 24)
    with pytest.raises(ConfigError):
        DataChannel(cipher="AES-256-GCM", ping_interval=-1)
    with pytest.raises(ConfigError):
        DataChannel(cipher="AES-256-GCM", replay_window=0)
    dc = DataChannel(cipher="AES-256-GCM")
    with pytest.raises(LocalProtocolError):
        dc.install_key(8, KEY2, 0.0)
    with pytest.raises(LocalProtocolError):
        dc.install_key(0, KEY2[:128], 0.0)


# -- replay ---------------------------------------------------------------------------------------


def test_replay_accepted_at_most_once() -> None:
    client, server = pair()
    wires = client.encrypt([bytes([0x45, i]) for i in range(5)], 0.0)
    assert len(server.decrypt(wires + wires, 0.0)) == 5
    assert server.decrypt(wires[::-1], 0.0) == []
    assert server.stats.drop_replay == 10


def test_reordered_within_window_accepted() -> None:
    client, server = pair()
    wires = client.encrypt([bytes([0x45, i]) for i in range(64)], 0.0)
    got = server.decrypt(wires[::-1], 0.0)
    assert got == [bytes([0x45, i]) for i in range(63, -1, -1)]


def test_behind_the_window_rejected() -> None:
    client, server = pair()
    wires = client.encrypt([bytes([0x45, i]) for i in range(70)], 0.0)
    assert server.decrypt([wires[69]], 0.0) == [bytes([0x45, 69])]  # highest = 70
    assert server.decrypt([wires[6]], 0.0) == [bytes([0x45, 6])]  # id 7: diff 63, inside
    assert server.decrypt([wires[5]], 0.0) == []  # id 6: diff 64, outside
    assert server.stats.drop_replay == 1


def test_replay_time_backtrack() -> None:
    client, server = pair()
    wires = client.encrypt([b"\x45a", b"\x45b", b"\x45c"], 0.0)
    assert server.decrypt([wires[2]], 0.0) == [b"\x45c"]
    assert server.decrypt([wires[1]], 15.0) == [b"\x45b"]
    assert server.decrypt([wires[0]], 15.5) == []  # older than 15 s behind a higher id
    assert server.stats.drop_replay == 1


def test_packet_id_zero_is_never_valid() -> None:
    client, _ = pair()
    wire = ref_packet("AES-256-GCM", IPV4, pid=0, from_server=True)
    assert client.decrypt([wire], 0.0) == []
    assert client.stats.drop_replay == 1


# -- keys -----------------------------------------------------------------------------------------


def test_lame_duck_decrypts_after_new_key() -> None:
    client, server = pair()
    (old,) = client.encrypt([b"\x45old"], 0.0)
    client.install_key(1, KEY2_B, 10.0)
    server.install_key(1, KEY2_B, 10.0)
    assert (client.primary_key_id, client.lame_duck_key_id) == (1, 0)
    (new,) = client.encrypt([b"\x45new"], 10.0)
    assert new[0] == 0x49
    assert new == ref_packet(
        "AES-256-GCM", b"\x45new", pid=1, from_server=False, key_id=1, key2=KEY2_B
    )
    assert server.decrypt([new, old], 10.0) == [b"\x45new", b"\x45old"]
    # a third key pushes the oldest out
    client.install_key(2, KEY2, 20.0)
    server.install_key(2, KEY2, 20.0)
    (newest,) = client.encrypt([b"\x45newest"], 20.0)
    old2 = ref_packet("AES-256-GCM", b"\x45x", pid=9, from_server=False, key_id=0)
    assert server.decrypt([old2, newest], 20.0) == [b"\x45newest"]
    assert server.stats.drop_no_key == 1
    assert server.lame_duck_key_id == 1
    server.retire_lame_duck()
    assert server.lame_duck_key_id is None
    late = ref_packet("AES-256-GCM", b"\x45y", pid=2, from_server=False, key_id=1, key2=KEY2_B)
    assert server.decrypt([late], 21.0) == []
    assert server.stats.drop_no_key == 2


def test_reinstall_same_key_id_keeps_no_lame_duck() -> None:
    client, _ = pair()
    client.install_key(0, KEY2_B, 1.0)
    assert client.lame_duck_key_id is None
    # fresh key => packet ids restart at 1
    (wire,) = client.encrypt([IPV4], 1.0)
    assert wire[4:8] == b"\x00\x00\x00\x01"


def test_packet_id_exhaustion_and_renegotiation_flag() -> None:
    client, server = pair()
    assert not client.needs_renegotiation
    client.encrypt([IPV4], 0.0)  # the sender starts using the key (packet id 1)
    client.tx._pid = PACKET_ID_WRAP_TRIGGER - 1  # jump ahead instead of sealing 4e9 packets
    assert not client.needs_renegotiation
    client.encrypt([IPV4], 0.0)
    assert client.needs_renegotiation
    assert client.usage().near_wrap
    client.tx._pid = PACKET_ID_MAX - 1
    (last,) = client.encrypt([IPV4], 0.0)
    assert last[4:8] == b"\xff\xff\xff\xff"
    assert server.decrypt([last], 0.0) == [IPV4]
    # out of packet ids: dropped and counted, never an error that would end the run
    assert client.encrypt([IPV4, IPV4], 0.0) == []
    assert client.exit_packet(0.0) is None
    assert client.stats.drop_no_packet_id == 3
    # a new key restores sending
    client.install_key(1, KEY2_B, 1.0)
    assert not client.needs_renegotiation
    assert len(client.encrypt([IPV4], 1.0)) == 1


# -- keepalive and OCC ------------------------------------------------------------------------------


def test_ping_timer_and_consumption() -> None:
    client, server = pair(ping_interval=10.0, now=100.0)
    assert client.get_timer() == 110.0
    client.handle_timer(105.0)
    assert client.packets_to_send(105.0) == []
    client.encrypt([IPV4], 108.0)  # data resets the ping timer
    assert client.get_timer() == 118.0
    client.handle_timer(118.0)
    pings = client.packets_to_send(118.0)
    assert len(pings) == 1
    assert ref_open("AES-256-GCM", pings[0], from_server=False) == PING_MAGIC
    assert client.stats.tx_pings == 1
    assert client.get_timer() == 128.0
    assert client.packets_to_send(118.5) == []  # only one per interval
    assert server.decrypt(pings, 119.0) == []
    assert server.stats.rx_pings == 1
    assert server.stats.rx_packets == 0
    assert server.last_received == 119.0


def test_no_ping_when_disabled() -> None:
    client, _ = pair(ping_interval=0.0)
    assert client.get_timer() is None
    client.handle_timer(1e6)
    assert client.packets_to_send(1e6) == []


def test_occ_exit_detected() -> None:
    client, server = pair()
    assert not client.peer_exited
    wire = ref_packet("AES-256-GCM", OCC_MAGIC + bytes([OCC_EXIT]), pid=1, from_server=True)
    other_occ = ref_packet("AES-256-GCM", OCC_MAGIC + b"\x00", pid=2, from_server=True)
    assert client.decrypt([other_occ], 1.0) == []
    assert not client.peer_exited
    assert client.decrypt([wire], 1.0) == []
    assert client.peer_exited
    assert client.stats.rx_occ == 2
    exit_wire = client.exit_packet(2.0)
    assert ref_open("AES-256-GCM", exit_wire, from_server=False) == OCC_MAGIC + b"\x06"
    assert server.decrypt([exit_wire], 2.0) == []
    assert server.peer_exited
    assert client.stats.tx_occ == 1
