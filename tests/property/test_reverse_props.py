"""Property tests for the reverse tunnel: hostile bytes, credit accounting, byte integrity."""

from __future__ import annotations

import importlib.util
import pathlib

from hypothesis import given
from hypothesis import strategies as st

from trivpn.reverse import session as S
from trivpn.reverse.frames import Flag, FrameDecoder, FrameType, encode
from trivpn.reverse.session import Session, SessionConfig

_spec = importlib.util.spec_from_file_location(
    "fuzz_reverse_frames", pathlib.Path(__file__).parents[2] / "fuzz" / "fuzz_reverse_frames.py"
)
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)

frame_types = st.sampled_from(list(FrameType))


@st.composite
def hostile_frames(draw: st.DrawFn) -> bytes:
    """Mostly well-formed headers with hostile contents, plus raw noise."""
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            parts.append(draw(st.binary(max_size=40)))
            continue
        t = draw(frame_types)
        sid = draw(st.sampled_from([0, 1, 2, 99, 2**32 - 1]))
        flags = draw(st.sampled_from([0, Flag.ACK, Flag.FIN, 0xFFFF]))
        payload = draw(st.binary(max_size=64))
        length = draw(st.sampled_from([len(payload), len(payload), 2**32 - 1, 300]))
        parts.append(
            bytes([1, t])
            + flags.to_bytes(2, "big")
            + sid.to_bytes(4, "big")
            + length.to_bytes(4, "big")
            + payload
        )
    return b"".join(parts)


@given(st.binary(max_size=300))
def test_fuzz_harness_random_bytes(data: bytes) -> None:
    fuzz.test_one_input(data)


@given(st.integers(0, 255), hostile_frames())
def test_fuzz_harness_hostile_frames(first: int, data: bytes) -> None:
    fuzz.test_one_input(bytes([first]) + data)


@given(
    st.lists(
        st.tuples(st.sampled_from(list(FrameType)), st.integers(1, 5), st.binary(max_size=30)),
        max_size=20,
    )
)
def test_decoder_roundtrip(specs: list) -> None:
    wire = b""
    expect = []
    for t, sid, payload in specs:
        sid = sid if t in (FrameType.OPEN, FrameType.DATA, FrameType.WINDOW, FrameType.RST) else 0
        size = {
            FrameType.HELLO: 40,
            FrameType.HELLO_ACK: 44,
            FrameType.AUTH: 32,
            FrameType.AUTH_OK: 32,
            FrameType.BIND: 2,
            FrameType.BIND_OK: 6,
            FrameType.PING: 8,
            FrameType.WINDOW: 4,
            FrameType.RST: 4,
        }.get(t)
        if size is not None:
            payload = (payload + bytes(size))[:size]
        wire += encode(t, 0, sid, payload)
        expect.append((t, sid, payload))
    dec = FrameDecoder(1 << 20)
    got = []
    for i in range(0, len(wire), 7):
        got += [(f.type, f.stream_id, f.payload) for f in dec.feed(wire[i : i + 7])]
    assert got == expect


@given(
    window=st.integers(1024, 20000),
    chunk=st.integers(256, 5000),
    writes=st.lists(
        st.tuples(st.integers(0, 3), st.binary(min_size=1, max_size=3000)), max_size=30
    ),
    consume_every=st.integers(1, 4),
)
def test_streams_deliver_every_byte_in_order_within_credit(
    window: int, chunk: int, writes: list, consume_every: int
) -> None:
    """A reader that consumes late never loses bytes, and never receives beyond its credit."""
    cfg = SessionConfig(window=window, chunk=chunk, burst=8192, send_buffer=1 << 20)
    relay = Session("relay", 0.0, cfg, tokens={"f": fuzz.TOKEN})
    client = Session("client", 0.0, cfg, token=fuzz.TOKEN, client_id=fuzz.CID)
    for _ in range(4):
        relay.receive_data(b"".join(client.data_to_send(0.0)), 0.0)
        client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)
    relay.events()
    relay.accept_bind(1, 1)
    client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)
    sids = [relay.open_stream("p", 0.0) for _ in range(4)]
    sent = {s: b"" for s in sids}
    got = {s: b"" for s in sids}
    unconsumed = {s: 0 for s in sids}
    for i, (which, data) in enumerate(writes):
        relay.send_data(sids[which], data)
        sent[sids[which]] += data
        _move(relay, client, got, unconsumed, consume=(i % consume_every == 0), window=window)
    for s in sids:
        relay.send_fin(s, 0.0)
    for _ in range(500):
        if not _move(relay, client, got, unconsumed, consume=True, window=window):
            break
    assert got == sent
    assert client.total_buffered == 0 and client.stream_count == 4  # client never sent FIN


def _move(
    relay: Session, client: Session, got: dict, unconsumed: dict, consume: bool, window: int
) -> bool:
    out = b"".join(relay.data_to_send(0.0))
    client.receive_data(out, 0.0)
    for ev in client.events():
        if isinstance(ev, S.StreamData):
            got[ev.stream_id] += ev.data
            unconsumed[ev.stream_id] += len(ev.data)
            assert unconsumed[ev.stream_id] <= window  # the sender respected the credit
    if consume:
        for sid, n in unconsumed.items():
            client.consumed(sid, n)
            unconsumed[sid] = 0
    back = b"".join(client.data_to_send(0.0))
    relay.receive_data(back, 0.0)
    relay.events()
    return bool(out or back)
