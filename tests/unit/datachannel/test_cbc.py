"""Legacy CBC + HMAC data channel (reference §6.3): vectors, key slots, refusals, tampering.

The fixed vectors below were produced with the OpenSSL command line (`openssl enc
-aes-*-cbc -K … -iv …` and `openssl dgst -mac HMAC -macopt hexkey:…`), not with our code,
from `key2 = bytes(range(256))`: client-to-server keys are bytes 0.. (cipher) and 64..
(hmac), server-to-client keys 128.. and 192.. (§4.2).
"""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trivpn.datachannel.cbc import (
    BLOCK,
    CBCAuthError,
    CBCDirection,
    CBCKeys,
    make_cbc_directions,
    seal_batch,
    split_key2_cbc,
)
from trivpn.datachannel.core import Compression, DataChannel
from trivpn.datachannel.crypto import (
    SUPPORTED_AUTH,
    SUPPORTED_CBC,
    auth_digest_size,
    is_cbc,
    normalize_auth_name,
    normalize_cipher_name,
    normalize_data_cipher,
)
from trivpn.errors import ConfigError, LocalProtocolError, RemoteProtocolError

KEY2 = bytes(range(256))

# (cipher, auth, sender is server, packet id, payload, iv, body = iv||ct, hmac)
VECTORS = [
    (
        "AES-256-CBC",
        "SHA256",
        False,
        1,
        b"trivpn CBC vector",
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf4dbca2f7962d5a2ba0b3994584aac9a2"
        "367afe262a86bd7b25a4d80e3fdb35b6",
        "02cd12f85fb3493450a9fe8b4ca5ad92326f93ee91416f1802e557685e76494d",
    ),
    (
        # plaintext is exactly one block: PKCS#7 adds a whole block of 0x10
        "AES-128-CBC",
        "SHA1",
        False,
        7,
        b"abcdefghijkl",
        "000102030405060708090a0b0c0d0e0f",
        "000102030405060708090a0b0c0d0e0fdaa71f4ce694f9c51eb761c33b452400"
        "c1f0a9dabdf5e0a969e9bfedb3f9e949",
        "a145433422ee7870bd8a662f5b702f095d82424d",
    ),
    (
        # the server sends with half 1 of key2; a 64-byte SHA512 key fills the hmac slot
        "AES-192-CBC",
        "SHA512",
        True,
        256,
        b"\xfa\x45\x00",
        "ffeeddccbbaa99887766554433221100",
        "ffeeddccbbaa998877665544332211002e5362004e802dd224ef82d0e3d89056",
        "bdee4a5cdbcebad5721788905b1b1f3523f4c74dde0ca13b0babc580eecb8cd8"
        "01e0ed8b73a86965060b0f835b96fd87de20367609afe425f78690169a150623",
    ),
]


@pytest.mark.parametrize("vector", VECTORS, ids=[v[0] + "-" + v[1] for v in VECTORS])
def test_seal_matches_openssl_vector(vector: tuple[str, str, bool, int, bytes, str, str, str]) -> None:
    cipher, auth, server, pid, payload, iv, body, mac = vector
    enc, _ = make_cbc_directions(KEY2, cipher, auth, is_server=server)
    sealed = enc.seal(pid, payload, bytes.fromhex(iv))
    assert sealed == bytes.fromhex(mac + body)


@pytest.mark.parametrize("vector", VECTORS, ids=[v[0] + "-" + v[1] for v in VECTORS])
def test_open_vector_as_the_peer(vector: tuple[str, str, bool, int, bytes, str, str, str]) -> None:
    cipher, auth, server, pid, payload, _iv, body, mac = vector
    # the peer is on the other side: its decrypting direction is our encrypting one
    _, dec = make_cbc_directions(KEY2, cipher, auth, is_server=not server)
    for header in (b"\x30", b"\x48\x00\x00\x05"):
        wire = header + bytes.fromhex(mac + body)
        assert dec.open(wire, len(header)) == (pid, payload)


def test_key_slots_client_and_server() -> None:
    c_tx, c_rx = split_key2_cbc(KEY2, "AES-256-CBC", "SHA256", is_server=False)
    assert c_tx == CBCKeys(KEY2[0:32], KEY2[64:96])
    assert c_rx == CBCKeys(KEY2[128:160], KEY2[192:224])
    s_tx, s_rx = split_key2_cbc(KEY2, "aes-256-cbc", "sha256", is_server=True)
    assert (s_tx, s_rx) == (c_rx, c_tx)
    tx1, _ = split_key2_cbc(KEY2, "AES-128-CBC", "SHA1", is_server=False)
    assert tx1 == CBCKeys(KEY2[0:16], KEY2[64:84])
    tx5, _ = split_key2_cbc(KEY2, "AES-128-CBC", "SHA512", is_server=False)
    assert tx5.hmac_key == KEY2[64:128]


@pytest.mark.parametrize("cipher", SUPPORTED_CBC)
@pytest.mark.parametrize("auth", ["SHA1", "SHA256", "SHA512"])
def test_round_trip_every_cipher_and_digest(cipher: str, auth: str) -> None:
    c_enc, c_dec = make_cbc_directions(KEY2, cipher, auth, is_server=False)
    s_enc, s_dec = make_cbc_directions(KEY2, cipher, auth, is_server=True)
    for size in (0, 1, 11, 12, 15, 16, 17, 1400):
        payload = bytes([size % 251]) * size
        wire = b"\x30" + c_enc.seal(size + 1, payload)
        assert s_dec.open(wire, 1) == (size + 1, payload)
        wire = b"\x30" + s_enc.seal(size + 1, payload)
        assert c_dec.open(wire, 1) == (size + 1, payload)
        body = len(wire) - 1 - auth_digest_size(auth) - BLOCK
        assert body % BLOCK == 0 and body >= 4 + size


def test_fresh_random_iv_per_packet() -> None:
    enc, _ = make_cbc_directions(KEY2, "AES-256-CBC", "SHA1", is_server=False)
    a, b = enc.seal(1, b"same"), enc.seal(1, b"same")
    assert a != b  # same id and payload, different IV, different packet
    assert a[20:36] != b[20:36]


@given(st.binary(max_size=200), st.integers(min_value=0, max_value=400), st.integers(0, 7))
def test_any_tampering_is_an_hmac_failure(payload: bytes, where: int, bit: int) -> None:
    enc, _ = make_cbc_directions(KEY2, "AES-256-CBC", "SHA256", is_server=False)
    _, dec = make_cbc_directions(KEY2, "AES-256-CBC", "SHA256", is_server=True)
    wire = bytearray(b"\x30" + enc.seal(9, payload))
    i = 1 + where % (len(wire) - 1)
    wire[i] ^= 1 << bit
    with pytest.raises(CBCAuthError):
        dec.open(bytes(wire), 1)


def test_header_is_not_authenticated_but_the_rest_is() -> None:
    """As in OpenVPN the opcode/peer-id header is outside the HMAC (§6.3)."""
    enc, _ = make_cbc_directions(KEY2, "AES-128-CBC", "SHA1", is_server=False)
    _, dec = make_cbc_directions(KEY2, "AES-128-CBC", "SHA1", is_server=True)
    body = enc.seal(3, b"x")
    assert dec.open(b"\x30" + body, 1) == dec.open(b"\x48\xab\xcd\xef" + body, 4)


def test_wrong_key_is_an_hmac_failure_not_garbage() -> None:
    enc, _ = make_cbc_directions(KEY2, "AES-256-CBC", "SHA1", is_server=False)
    # our own decrypting direction uses the server's keys: the HMAC cannot match
    _, own_dec = make_cbc_directions(KEY2, "AES-256-CBC", "SHA1", is_server=False)
    with pytest.raises(CBCAuthError):
        own_dec.open(b"\x30" + enc.seal(1, b"hello"), 1)


@pytest.mark.parametrize("length", [0, 1, 20, 35, 36, 51, 53, 60, 67])
def test_malformed_lengths_raise_remote_protocol_error(length: int) -> None:
    _, dec = make_cbc_directions(KEY2, "AES-128-CBC", "SHA1", is_server=True)
    wire = b"\x30" + bytes(length)
    with pytest.raises(RemoteProtocolError):
        dec.open(wire, 1)


def _forge(keys: CBCKeys, auth: str, plain: bytes) -> bytes:
    """A correctly MACed packet around arbitrary (possibly badly padded) plaintext."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    iv = bytes(16)
    enc = Cipher(algorithms.AES(keys.cipher_key), modes.CBC(iv)).encryptor()
    body = iv + enc.update(plain) + enc.finalize()
    return hmac.digest(keys.hmac_key, body, SUPPORTED_AUTH[auth][0]) + body


@pytest.mark.parametrize(
    "plain",
    [
        bytes(15) + b"\x00",  # pad byte 0
        bytes(15) + b"\x11",  # pad longer than a block
        bytes(14) + b"\x01\x02",  # pad bytes disagree
        b"\x00\x00\x00" + b"\x0d" * 13,  # no room for the packet id
    ],
)
def test_bad_padding_behind_a_valid_hmac_is_refused(plain: bytes) -> None:
    tx, _ = split_key2_cbc(KEY2, "AES-128-CBC", "SHA1", is_server=False)
    _, dec = make_cbc_directions(KEY2, "AES-128-CBC", "SHA1", is_server=True)
    wire = b"\x30" + _forge(tx, "SHA1", plain)
    with pytest.raises(RemoteProtocolError) as info:
        dec.open(wire, 1)
    assert not isinstance(info.value, CBCAuthError)


def test_seal_batch_ids_framing_and_empty_payloads() -> None:
    enc, _ = make_cbc_directions(KEY2, "AES-256-CBC", "SHA256", is_server=False)
    _, dec = make_cbc_directions(KEY2, "AES-256-CBC", "SHA256", is_server=True)
    out, last = seal_batch(enc, b"\x31", 41, [b"a", b"", b"bc"], lambda p: b"\xfa" + p)
    assert last == 43
    assert [w[0] for w in out] == [0x31, 0x31]
    assert [dec.open(w, 1) for w in out] == [(42, b"\xfaa"), (43, b"\xfabc")]


def test_local_misuse_is_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError):
        split_key2_cbc(KEY2[:200], "AES-256-CBC", "SHA1", is_server=False)
    with pytest.raises(LocalProtocolError):
        CBCDirection("AES-256-CBC", "SHA1", CBCKeys(bytes(16), bytes(20)))
    with pytest.raises(LocalProtocolError):
        CBCDirection("AES-128-CBC", "SHA256", CBCKeys(bytes(16), bytes(20)))
    enc, _ = make_cbc_directions(KEY2, "AES-256-CBC", "SHA1", is_server=False)
    with pytest.raises(LocalProtocolError):
        enc.seal(1, b"x", bytes(8))


# -- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_name", "canonical"),
    [("aes-256-cbc", "AES-256-CBC"), ("AES-128-CBC", "AES-128-CBC"), (" Aes-192-Cbc ", "AES-192-CBC"),
     ("aes-256-gcm", "AES-256-GCM"), ("chacha20-poly1305", "CHACHA20-POLY1305")],
)
def test_normalize_data_cipher(given_name: str, canonical: str) -> None:
    assert normalize_data_cipher(given_name) == canonical
    assert is_cbc(given_name) == canonical.endswith("-CBC")


@pytest.mark.parametrize("name", ["BF-CBC", "bf-cbc", "DES-EDE3-CBC", "DES-CBC", "CAST5-CBC",
                                  "RC2-CBC", "IDEA-CBC", "DESX-CBC", "BLOWFISH"])
def test_64bit_block_ciphers_refused_with_explanation(name: str) -> None:
    for normalize in (normalize_data_cipher, normalize_cipher_name):
        with pytest.raises(ConfigError) as info:
            normalize(name)
        msg = str(info.value)
        assert name in msg and "64-bit block" in msg and "SWEET32" in msg
        assert "\n" not in msg
    with pytest.raises(ConfigError) as info:
        normalize_data_cipher(name)
    assert "AES-256-CBC" in str(info.value)  # says what would work instead


@pytest.mark.parametrize("name", ["none", "AES-256-CFB", "AES-128-OFB", "CAMELLIA-256-CBC",
                                  "ARIA-128-CBC", "AES-256-CTR", "", "rot13"])
def test_other_ciphers_refused(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        normalize_data_cipher(name)
    assert "\n" not in str(info.value)
    if name:
        assert name in str(info.value)


def test_aead_only_normalizer_still_refuses_cbc() -> None:
    with pytest.raises(ConfigError, match="AES-256-CBC is not supported"):
        normalize_cipher_name("AES-256-CBC")


@pytest.mark.parametrize(
    ("given_name", "canonical", "size"),
    [("sha1", "SHA1", 20), ("SHA256", "SHA256", 32), ("sha2-256", "SHA256", 32),
     ("SHA-512", "SHA512", 64), ("sha384", "SHA384", 48), ("SHA224", "SHA224", 28)],
)
def test_auth_names(given_name: str, canonical: str, size: int) -> None:
    assert normalize_auth_name(given_name) == canonical
    assert auth_digest_size(given_name) == size


@pytest.mark.parametrize(("name", "why"), [("none", "forged"), ("MD5", "weak"), ("whirlpool", "unsupported")])
def test_auth_refusals(name: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        normalize_auth_name(name)
    with pytest.raises(ConfigError):
        make_cbc_directions(KEY2, "AES-256-CBC", name, is_server=False)


def test_aead_cipher_is_not_a_cbc_direction() -> None:
    with pytest.raises(ConfigError, match="not a CBC cipher"):
        make_cbc_directions(KEY2, "AES-256-GCM", "SHA1", is_server=False)


# -- the data-channel core with CBC keys ----------------------------------------------------


def _pair(
    cipher: str = "AES-256-CBC", auth: str = "SHA256", **kw: object
) -> tuple[DataChannel, DataChannel]:
    client = DataChannel(cipher=cipher, auth=auth, **kw)  # type: ignore[arg-type]
    server = DataChannel(cipher=cipher, auth=auth, is_server=True, **kw)  # type: ignore[arg-type]
    client.install_key(0, KEY2, 0.0)
    server.install_key(0, KEY2, 0.0)
    return client, server


def test_core_opens_the_openssl_vector_once() -> None:
    _, server = _pair()
    cipher, auth, _srv, pid, payload, _iv, body, mac = VECTORS[0]
    wire = b"\x30" + bytes.fromhex(mac + body)  # P_DATA_V1, key id 0, packet id 1
    assert server.decrypt([wire], 1.0) == [payload]
    assert server.decrypt([wire], 1.0) == []  # the same packet id again is a replay
    assert server.stats.drop_replay == 1 and server.stats.rx_packets == 1


@pytest.mark.parametrize("peer_id", [None, 7])
@pytest.mark.parametrize("compression", list(Compression))
def test_core_round_trip_headers_and_framing(peer_id: int | None, compression: Compression) -> None:
    client, server = _pair(peer_id=peer_id, compression=compression)
    ips = [b"\x45" + bytes(27), b"\x60" + bytes(47), b"\x45\x01"]
    wire = client.encrypt(ips, 1.0)
    assert len(wire) == 3
    if peer_id is None:
        assert all(w[0] == 0x30 for w in wire)
    else:
        assert all(w[:4] == bytes((0x48, 0, 0, 7)) for w in wire)
    assert server.decrypt(wire, 1.0) == ips
    back = server.encrypt(ips[:1], 2.0)
    assert client.decrypt(back, 2.0) == ips[:1]
    assert client.stats.tx_packets == 3 and server.stats.rx_packets == 3


def test_core_packet_ids_are_sequential_inside_the_ciphertext() -> None:
    client, _ = _pair("AES-128-CBC", "SHA1")
    _, dec = make_cbc_directions(KEY2, "AES-128-CBC", "SHA1", is_server=True)
    wire = client.encrypt([b"a", b"", b"b"], 0.0) + [client.exit_packet(1.0)]
    assert [dec.open(w, 1)[0] for w in wire] == [1, 2, 3]


def test_core_keepalive_and_exit_over_cbc() -> None:
    client, server = _pair(ping_interval=10.0)
    pings = client.packets_to_send(10.0)
    assert len(pings) == 1
    assert server.decrypt(pings, 10.0) == [] and server.stats.rx_pings == 1
    assert server.last_received == 10.0
    assert server.decrypt([client.exit_packet(11.0)], 11.0) == []
    assert server.peer_exited and server.stats.rx_occ == 1


def test_core_drops_and_counts_bad_packets() -> None:
    client, server = _pair()
    good = client.encrypt([b"\x45" + bytes(19)], 0.0)[0]
    tampered = good[:-1] + bytes((good[-1] ^ 1,))
    other_key = bytes((0x31,)) + good[1:]  # key id 1 is not installed
    bad_op = bytes((0x20,)) + good[1:]
    short = good[:30]
    assert server.decrypt([b"", tampered, other_key, bad_op, short, good], 5.0) == [b"\x45" + bytes(19)]
    st_ = server.stats
    assert (st_.drop_malformed, st_.drop_auth, st_.drop_no_key) == (3, 1, 1)
    assert server.last_received == 5.0


def test_core_forged_or_replayed_packets_do_not_feed_keepalive() -> None:
    client, server = _pair()
    pkt = client.encrypt([b"\x45"], 0.0)[0]
    server.decrypt([pkt], 1.0)
    server.decrypt([pkt], 2.0)  # replayed
    server.decrypt([pkt[:-1] + b"\x00"], 3.0)  # forged
    assert server.last_received == 1.0


def test_core_lame_duck_key_still_decrypts() -> None:
    client, server = _pair()
    old = client.encrypt([b"\x45old"], 0.0)
    key2b = bytes(reversed(KEY2))
    client.install_key(1, key2b, 1.0)
    server.install_key(1, key2b, 1.0)
    new = client.encrypt([b"\x45new"], 1.0)
    assert new[0][0] == 0x31
    assert server.decrypt(new + old, 1.0) == [b"\x45new", b"\x45old"]


def test_core_cbc_needs_auth_and_aead_ignores_it() -> None:
    with pytest.raises(ConfigError, match="'auth'"):
        DataChannel(cipher="AES-256-CBC")
    with pytest.raises(ConfigError, match="refused"):
        DataChannel(cipher="AES-256-CBC", auth="none")
    with pytest.raises(ConfigError, match="64-bit block"):
        DataChannel(cipher="BF-CBC", auth="SHA1")
    aead = DataChannel(cipher="AES-256-GCM", auth="SHA512")
    assert aead.auth is None
    assert DataChannel(cipher="aes-128-cbc", auth="sha2-256").auth == "SHA256"


@given(st.binary(max_size=120), st.sampled_from([0x30, 0x48]))
def test_core_random_cbc_packets_are_dropped_never_raised(data: bytes, first: int) -> None:
    _, server = _pair()
    assert server.decrypt([bytes((first,)) + data, data], 0.0) == []
