"""atheris harness for the data-channel receive path (`DataChannel.decrypt`), AEAD and CBC.

Both modes run against a fresh receiver keyed with `KEY2`, a key block derived by the real
PRF path (`key2_from_prf`) from fixed key-method-2 values; the seed corpus
(`fuzz/make_corpus.py`) holds packets sealed with the same key, so inputs get past
authentication and the post-decryption parsing (compression framing, ping and OCC
detection) is fuzzed too.

* **wire** mode: the input is wire packets. `decrypt` never raises and counts every packet
  exactly once; what it delivers is authentic according to a reference opener written
  apart from the core (§6.2 AEAD, §6.3 CBC+HMAC) and never twice for one packet id; a
  genuine packet sent after the input is still delivered (junk never poisons the replay
  window).
* **sealed** mode: the input is plaintexts *as they are after decryption* (framing byte
  included). The harness seals them with the real sender, so every one authenticates, and
  the receiver must deliver and count exactly what a reference model of the framing and of
  the ping / OCC messages says.

Input layout: byte 0 is the mode, the rest is cut into packets at each ``ff fe`` pair (at
most `MAX_PACKETS`). Mode bits: 0-1 compression framing, 2-3 the cipher within its family,
4 the CBC family (AES-CBC + HMAC), 5 sealed mode, 6 the sender omits the peer id (V1).

`REACHED` counts, per stage, the inputs that got there (the smoke test asserts on it).

Run (atheris is optional and imported only here)::

    python -m pip install atheris
    python fuzz/fuzz_data_packet.py -max_total_time=300 [corpus_dir]
"""

from __future__ import annotations

import hmac
import sys
from collections import Counter

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from trivpn.datachannel.core import OCC_EXIT, OCC_MAGIC, PING_MAGIC, Compression, DataChannel
from trivpn.datachannel.crypto import SUPPORTED_AEAD
from trivpn.tlssession.keymethod import KeyMethod2
from trivpn.tlssession.keys import key2_from_prf


def _derive_key2() -> bytes:
    """A key block made the way a PRF session makes one, from fixed key-method-2 values."""
    client = KeyMethod2(bytes(range(48)), bytes(range(32)), bytes(range(32, 64)), "", "", "", "")
    server = KeyMethod2(None, bytes(range(64, 96)), bytes(range(96, 128)), "", "", "", "")
    return key2_from_prf(client, server, b"client-s", b"server-s")


KEY2 = _derive_key2()
#: Most packets one input turns into (keeps each run short).
MAX_PACKETS = 16
#: (cipher, auth digest) per family; the mode's bits 2-3 pick one.
AEAD_VARIANTS = tuple((c, None) for c in SUPPORTED_AEAD)
CBC_VARIANTS = (("AES-256-CBC", "SHA256"), ("AES-256-CBC", "SHA1"), ("AES-256-CBC", "SHA512"),
                ("AES-128-CBC", "SHA256"))
_MODES = list(Compression)
SEALED, CBC, V1 = 0x20, 0x10, 0x40
NOW = 1.0
#: Inputs that reached each stage (reset by whoever wants a count).
REACHED: Counter[str] = Counter()

#: Seeds besides the corpus: a V2 and a V1 header for key 0 followed by junk, a bare opcode.
SEEDS = (
    bytes.fromhex("00") + bytes.fromhex("4800000000000001") + bytes(40),
    bytes.fromhex("05") + bytes.fromhex("3000000001") + bytes(30) + b"\xff\xfe" + b"\x48",
    b"\x02\x50",
)

# -- a reference model, written from the protocol description and not from the core ------

_KEY_LEN = {"AES-128-GCM": 16, "AES-192-GCM": 24, "AES-256-GCM": 32, "CHACHA20-POLY1305": 32,
            "AES-128-CBC": 16, "AES-256-CBC": 32}
_MAC = {"SHA1": ("sha1", 20), "SHA256": ("sha256", 32), "SHA512": ("sha512", 64)}


def ref_open(cipher: str, auth: str | None, wire: bytes) -> tuple[int, bytes] | None:
    """(packet id, plaintext) if `wire` is authentic for key id 0 sent by the client, else None.

    The client sends with the first half of key2: cipher key at 0, hmac slot at 64.
    """
    if not wire or wire[0] & 7 or wire[0] >> 3 not in (6, 9):
        return None
    off = 4 if wire[0] >> 3 == 9 else 1
    key = KEY2[: _KEY_LEN[cipher]]
    if auth is not None:  # HMAC(IV || ct) first, then AES-CBC(pid || payload || PKCS#7)
        digest, mac_len = _MAC[auth]
        body = wire[off + mac_len :]
        if len(body) < 32 or len(body) % 16:
            return None
        if not hmac.compare_digest(hmac.digest(KEY2[64 : 64 + mac_len], body, digest),
                                   wire[off : off + mac_len]):
            return None
        dec = Cipher(algorithms.AES(key), modes.CBC(body[:16])).decryptor()
        plain = dec.update(body[16:]) + dec.finalize()
        pad = plain[-1]
        if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad or len(plain) - pad < 4:
            return None
        return int.from_bytes(plain[:4], "big"), plain[4:-pad]
    if len(wire) < off + 20:
        return None
    pid, tag, ct = wire[off : off + 4], wire[off + 4 : off + 20], wire[off + 20 :]
    aead = ChaCha20Poly1305(key) if cipher.startswith("CHACHA") else AESGCM(key)
    ad = wire[: off + 4] if off == 4 else pid
    try:
        plain = aead.decrypt(pid + KEY2[64:72], ct + tag, ad)
    except InvalidTag:
        return None
    return int.from_bytes(pid, "big"), plain


def ref_unframe(compression: Compression, p: bytes) -> bytes | None:
    """The payload inside one decrypted plaintext, or None: a framing we must drop."""
    if compression is Compression.NONE or not p:
        return p
    if compression is Compression.LZO_NO:
        return p[1:] if p[0] == 0xFA else None
    if compression is Compression.STUB:
        return (p[-1:] + p[1:-1] if len(p) > 1 else b"") if p[0] == 0xFB else None
    if p[0] != 0x50:  # STUB_V2: only a leading 0x50 is an escape
        return p
    return p[2:] if len(p) >= 2 and p[1] in (0x00, 0x0A) else None


def ref_kind(payload: bytes | None) -> str:
    """What the receiver does with an authentic payload: comp, ping, empty, occ or data."""
    if payload is None:
        return "comp"
    if payload == PING_MAGIC:
        return "ping"
    if not payload:
        return "empty"
    return "occ" if payload.startswith(OCC_MAGIC) else "data"


# -- the harness ------------------------------------------------------------------------


def _channel(cipher: str, auth: str | None, compression: Compression, *, server: bool,
             v1: bool = False) -> DataChannel:
    ch = DataChannel(cipher=cipher, is_server=server, peer_id=None if v1 else 0,
                     compression=compression, auth=auth)
    ch.install_key(0, KEY2, 0.0)
    return ch


def _accounted(ch: DataChannel) -> int:
    s = ch.stats
    return (s.rx_packets + s.rx_pings + s.rx_occ + s.rx_empty + s.drop_malformed + s.drop_auth
            + s.drop_replay + s.drop_no_key + s.drop_compression)


def _wire(cipher: str, auth: str | None, compression: Compression, v1: bool,
          packets: list[bytes]) -> None:
    family = "cbc" if auth else "aead"
    rx = _channel(cipher, auth, compression, server=True)
    got = rx.decrypt(packets, NOW)
    if _accounted(rx) != len(packets):
        raise AssertionError(f"{len(packets)} packets but {_accounted(rx)} counted: {rx.stats}")
    opened = [o for o in (ref_open(cipher, auth, w) for w in packets) if o is not None]
    data: list[tuple[int, bytes]] = []  # (packet id, payload) of the authentic IP packets
    for pid, plain in opened:
        payload = ref_unframe(compression, plain)
        if payload is not None and ref_kind(payload) == "data":
            data.append((pid, payload))
    remaining = iter(payload for _, payload in data)
    if not all(any(p == u for u in remaining) for p in got):  # an in-order subsequence
        raise AssertionError(f"delivered a packet the reference calls forged: {got!r}")
    if len(got) > len({pid for pid, _ in data}):
        raise AssertionError("one packet id delivered twice (replay)")
    if opened:
        REACHED[f"wire {family}: an authentic packet"] += 1
    if got:
        REACHED[f"wire {family}: a packet delivered"] += 1
    highest = max((pid for pid, _ in opened), default=0)
    if highest < 64:  # a genuine packet right after the input is still taken
        tx = _channel(cipher, auth, compression, server=False, v1=v1)
        genuine = b"\x45genuine"
        *_, wire = tx.encrypt([b"\x45filler"] * highest + [genuine], NOW)
        if rx.decrypt([wire], NOW) != [genuine]:
            raise AssertionError("a genuine packet was refused after the input")


def _sealed(cipher: str, auth: str | None, compression: Compression, v1: bool,
            plaintexts: list[bytes]) -> None:
    family = "cbc" if auth else "aead"
    tx = _channel(cipher, auth, Compression.NONE, server=False, v1=v1)  # no framing added
    rx = _channel(cipher, auth, compression, server=True)
    sent = [p for p in plaintexts if p]
    got = rx.decrypt(tx.encrypt(sent, NOW), NOW)
    payloads = [ref_unframe(compression, p) for p in sent]
    kinds = Counter(ref_kind(u) for u in payloads)
    want = [u for u in payloads if u is not None and ref_kind(u) == "data"]
    s = rx.stats
    if got != want:
        raise AssertionError(f"delivered {got!r}, the reference says {want!r}")
    if (s.rx_pings, s.rx_occ, s.rx_empty, s.drop_compression) != (
        kinds["ping"], kinds["occ"], kinds["empty"], kinds["comp"]
    ) or s.drop_auth or s.drop_malformed or s.drop_replay or s.drop_no_key:
        raise AssertionError(f"counters {s} disagree with the reference {dict(kinds)}")
    exits = any(u is not None and u[:17] == OCC_MAGIC + bytes([OCC_EXIT]) for u in payloads)
    if rx.peer_exited != exits:
        raise AssertionError(f"peer_exited is {rx.peer_exited}, the reference says {exits}")
    if sent:
        REACHED[f"sealed {family}: post-decryption parsing"] += 1
    for kind in kinds:
        REACHED[f"sealed {family}: {kind}"] += 1


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    compression = _MODES[mode & 0x03]
    variants = CBC_VARIANTS if mode & CBC else AEAD_VARIANTS
    cipher, auth = variants[(mode >> 2) & 0x03]
    packets = data[1:].split(b"\xff\xfe")[:MAX_PACKETS]
    if mode & SEALED:
        _sealed(cipher, auth, compression, bool(mode & V1), packets)
    else:
        _wire(cipher, auth, compression, bool(mode & V1), packets)


def main() -> None:
    import atheris  # type: ignore[import-untyped]  # optional, ships no type stubs

    atheris.instrument_all()
    for seed in SEEDS:
        test_one_input(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
