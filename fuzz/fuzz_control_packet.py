"""atheris harness for the control packet codec.

Invariant: any bytes either parse or raise RemoteProtocolError (nothing else escapes), and
whatever parses serializes back to exactly the same bytes.

Run (atheris is optional and imported only here)::

    python -m pip install atheris
    python fuzz/fuzz_control_packet.py -max_total_time=300 [corpus_dir]
"""

from __future__ import annotations

import sys

from trivpn.controlchannel.packet import parse_control_packet, serialize_control_packet
from trivpn.errors import RemoteProtocolError

#: Seeds from OpenVPN's test_pkt.c (plaintext reset, CONTROL_V1 with an ack, ACK_V1).
SEEDS = (
    bytes.fromhex("386891923fa31034370000000000"),
    bytes.fromhex("207819bf2ebcd19a450100000000eafebfa4418ae31b00000001160301"),
    bytes.fromhex("28aeb9afe1f01d79c80100000000dd85db535623b02e"),
)


def test_one_input(data: bytes) -> None:
    try:
        packet = parse_control_packet(data)
    except RemoteProtocolError:
        return
    if serialize_control_packet(packet) != data:
        raise AssertionError(f"round trip changed {data.hex()}")


def main() -> None:
    import atheris

    atheris.instrument_all()
    for seed in SEEDS:
        test_one_input(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
