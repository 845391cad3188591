"""atheris harness for the TCP length framing (`trivpn.networkio.framing.TCPFramer`).

Invariants, for any stream a peer might send:

* the framer either returns packets or raises RemoteProtocolError, nothing else;
* feeding the stream all at once, byte by byte, or in irregular chunks gives the same
  packets and fails exactly when a tiny reference model of the format (written
  independently here) finds a bad length; byte by byte, the packets before the bad length
  are all delivered first, while a bigger chunk that reaches it raises without returning
  the packets it completed, so there only a prefix must match;
* whatever was framed re-frames (`frame_packets`) to exactly the bytes it came from, and the
  framer keeps exactly the unconsumed tail.

Input layout: the first byte picks the largest frame (bit 7 clear: 65535; set: a small
limit, so oversized lengths are exercised too) and the chunk pattern; the rest is the stream.

Run (atheris is optional and imported only here)::

    python -m pip install atheris
    python fuzz/fuzz_tcp_framing.py -max_total_time=300 [corpus_dir]
"""

from __future__ import annotations

import sys

from trivpn.errors import RemoteProtocolError
from trivpn.networkio.framing import MAX_FRAME, TCPFramer, frame_packets

#: Stream bytes used per input: byte-by-byte feeding costs a call per byte, and a longer
#: stream finds nothing a shorter one cannot (small `max_frame` limits cover long lengths).
MAX_STREAM = 1024

#: A two-packet stream (as captured from a TCP session: a hard reset then an ACK).
SEEDS = (
    b"\x00" + bytes.fromhex("000e") + bytes.fromhex("38") + bytes(13),
    b"\x83" + bytes.fromhex("0003414243") + bytes.fromhex("00ff"),
    b"\x05\x00",
)


def _reference(stream: bytes, max_frame: int) -> tuple[list[bytes], bool, int]:
    """(packets before any error, whether the stream holds a bad length, bytes consumed)."""
    packets: list[bytes] = []
    pos = 0
    while len(stream) - pos >= 2:
        length = int.from_bytes(stream[pos : pos + 2], "big")
        if not 1 <= length <= max_frame:
            return packets, True, pos
        if len(stream) - pos - 2 < length:
            break
        packets.append(stream[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return packets, False, pos


def _feed_in_chunks(stream: bytes, max_frame: int, sizes: list[int]) -> tuple[list[bytes], bool, int]:
    """Feed `stream` cut by the cycle of `sizes`; (packets, raised, pending at the end)."""
    framer = TCPFramer(max_frame)
    got: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(stream):
        n = sizes[i % len(sizes)]
        i += 1
        try:
            got.extend(framer.feed(stream[pos : pos + n]))
        except RemoteProtocolError:
            return got, True, -1
        pos += n
    return got, False, framer.pending


def test_one_input(data: bytes) -> None:
    if not data:
        return
    control, stream = data[0], data[1 : 1 + MAX_STREAM]
    max_frame = MAX_FRAME if control < 0x80 else 1 + (control & 0x3F) * 8
    expected, bad, consumed = _reference(stream, max_frame)
    patterns = (
        [max(1, len(stream))],  # all at once
        [1],  # byte by byte
        [1 + (control & 0x07), 2, 1 + (control >> 3 & 0x0F)],  # irregular
    )
    for sizes in patterns:
        got, raised, pending = _feed_in_chunks(stream, max_frame, sizes)
        if raised != bad:
            raise AssertionError(f"framer {'raised' if raised else 'did not raise'} on {stream.hex()}")
        if bad and sizes != [1]:
            # The feed call that meets the bad length raises, so packets it completed are
            # never returned (the connection is dropped anyway): a prefix must match.
            if got != expected[: len(got)]:
                raise AssertionError(f"chunks {sizes} gave {got!r}, not a prefix of {expected!r}")
        elif got != expected:
            raise AssertionError(f"chunks {sizes} gave {got!r}, expected {expected!r}")
        if not bad and pending != len(stream) - consumed:
            raise AssertionError(f"pending {pending}, expected {len(stream) - consumed}")
    if frame_packets(expected) != stream[:consumed]:
        raise AssertionError("re-framing changed the bytes")


def main() -> None:
    import atheris

    atheris.instrument_all()
    for seed in SEEDS:
        test_one_input(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
