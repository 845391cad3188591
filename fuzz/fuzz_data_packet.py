"""atheris harness for the data-channel receive path (`DataChannel.decrypt`).

Invariants, for any bytes the peer might send:

* `decrypt` never raises; every packet is either delivered or counted as a drop;
* nothing forged is ever delivered (random bytes cannot pass the AEAD tag);
* forgeries do not poison the replay window: a genuine packet sent right after a batch of
  junk is still delivered.

The first input byte picks the compression framing and the cipher; the rest is cut into
packets at each ``ff fe`` pair, so one input can exercise a whole batch.

Run (atheris is optional and imported only here)::

    python -m pip install atheris
    python fuzz/fuzz_data_packet.py -max_total_time=300 [corpus_dir]
"""

from __future__ import annotations

import sys

from trivpn.datachannel.core import Compression, DataChannel
from trivpn.datachannel.crypto import SUPPORTED_AEAD

KEY2 = bytes((i * 29 + 7) & 0xFF for i in range(256))
#: Most packets one input turns into (keeps each run short).
MAX_PACKETS = 16
_MODES = list(Compression)

#: One (client, server) pair per (cipher, compression), built on first use and kept.
_PAIRS: dict[tuple[str, Compression], tuple[DataChannel, DataChannel]] = {}
_CLOCK = [0.0]

#: Seeds: a V2 and a V1 header for key 0 followed by junk, and a bare opcode.
SEEDS = (
    bytes.fromhex("00") + bytes.fromhex("4800000000000001") + bytes(40),
    bytes.fromhex("05") + bytes.fromhex("3000000001") + bytes(30) + b"\xff\xfe" + b"\x48",
    b"\x02\x50",
)


def _pair(cipher: str, compression: Compression) -> tuple[DataChannel, DataChannel]:
    pair = _PAIRS.get((cipher, compression))
    if pair is None:
        client = DataChannel(cipher=cipher, peer_id=0, compression=compression)
        server = DataChannel(cipher=cipher, is_server=True, compression=compression)
        client.install_key(0, KEY2, 0.0)
        server.install_key(0, KEY2, 0.0)
        pair = _PAIRS[(cipher, compression)] = (client, server)
    return pair


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0]
    compression = _MODES[mode & 0x03]
    cipher = SUPPORTED_AEAD[(mode >> 2) & 0x03]
    client, server = _pair(cipher, compression)
    packets = data[1:].split(b"\xff\xfe")[:MAX_PACKETS]
    _CLOCK[0] += 0.001
    now = _CLOCK[0]
    before = server.stats.rx_packets
    got = server.decrypt(packets, now)
    if got:
        raise AssertionError(f"forged packet delivered: {got!r}")
    if server.stats.rx_packets != before:
        raise AssertionError("rx counter moved without delivery")
    genuine = b"\x45" + now.hex().encode()
    if server.decrypt(client.encrypt([genuine], now), now) != [genuine]:
        raise AssertionError("a genuine packet was refused after junk")


def main() -> None:
    import atheris

    atheris.instrument_all()
    for seed in SEEDS:
        test_one_input(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
