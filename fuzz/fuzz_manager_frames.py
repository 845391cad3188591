"""atheris harness for the manager ⇄ tunnel wire: header, frames and message decoding.

Invariants: whatever bytes arrive, the header reader/parser, the frame decoder and the
protobuf decoding raise only RemoteProtocolError; the frames the decoder returns re-frame
to a prefix of the input; every decoded message classifies without error on both roles;
and the network-settings mapping the manager applies refuses bad requests with
RemoteProtocolError only.

The seed corpus (`fuzz/make_corpus.py`) is real streams: a header line, then frames of the
messages each role sends (start, network settings, peer updates, logs, stop), framed by
the real encoder. `REACHED` counts the inputs that got past the header and the length
check into the frame decoder's output, and those that decoded as a protobuf message.

Run (atheris is optional and imported only in main)::

    python -m pip install atheris
    python fuzz/fuzz_manager_frames.py -max_total_time=300 [corpus_dir]
"""

from __future__ import annotations

import sys
from collections import Counter

from trivpn.errors import RemoteProtocolError
from trivpn.manager import manager_pb2 as pb
from trivpn.manager.convert import tun_config_from_request
from trivpn.manager.framing import FrameDecoder, HeaderReader, encode_frame, parse_header
from trivpn.manager.rpc import RPCCore, decode_message

#: Inputs that reached each stage (reset by whoever wants a count).
REACHED: Counter[str] = Counter()


def _header(data: bytes) -> int:
    """Feed bytes to a header reader; the offset after the header (or len(data))."""
    r = HeaderReader()
    for i, b in enumerate(data):
        try:
            if r.feed_byte(b):
                try:
                    parse_header(r.line or b"", "manager")
                    REACHED["header: valid"] += 1
                except RemoteProtocolError:
                    pass
                return i + 1
        except RemoteProtocolError:
            return len(data)
    return len(data)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    if mode & 1:
        body = body[_header(body) :]
    step = (mode >> 1) % 32 + 1
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for pos in range(0, len(body), step):
        try:
            frames += decoder.feed(body[pos : pos + step])
        except RemoteProtocolError:
            break
    assert body.startswith(b"".join(encode_frame(f) for f in frames))
    if frames:
        REACHED["frame decoder: frames"] += 1
    decoded: set[str] = set()
    for role, cls in (("tunnel", pb.ManagerMessage), ("manager", pb.TunnelMessage)):
        core = RPCCore(role)
        for payload in frames:
            try:
                msg = decode_message(payload, cls)
            except RemoteProtocolError:
                continue
            decoded.add(f"protobuf: {msg.WhichOneof('msg') or 'rpc only'}")
            core.receive(msg)
            if msg.WhichOneof("msg") == "network_settings" and cls is pb.TunnelMessage:
                try:
                    tun_config_from_request(msg.network_settings)
                except RemoteProtocolError:
                    pass
    if decoded:
        REACHED["protobuf: a message"] += 1
    REACHED.update(decoded)


def main() -> None:
    import atheris  # type: ignore[import-untyped]  # optional, ships no type stubs

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
