"""Regression tests for issue 15's bounds (hostile peers), each showing its figure."""

from __future__ import annotations

from trivpn.reverse import session as S
from trivpn.reverse.frames import FrameDecoder, FrameType, encode
from trivpn.reverse.session import Session, SessionConfig, State

CID = bytes(range(16))
TOKEN = b"0123456789abcdef-token"


def _pump(a: Session, b: Session, now: float = 0.0, rounds: int = 50) -> tuple[list, list]:
    ea: list = []
    eb: list = []
    for _ in range(rounds):
        out_a = b"".join(a.data_to_send(now))
        if out_a:
            b.receive_data(out_a, now)
        out_b = b"".join(b.data_to_send(now))
        if out_b:
            a.receive_data(out_b, now)
        ea += a.events()
        eb += b.events()
        if not out_a and not out_b:
            break
    return ea, eb


def _authenticated_pair() -> tuple[Session, Session]:
    relay = Session("relay", 0.0, SessionConfig(), tokens={"alice": TOKEN})
    client = Session("client", 0.0, SessionConfig(), token=TOKEN, client_id=CID)
    er, _ = _pump(relay, client)
    assert S.BindRequested(0) in er
    return relay, client


def test_frames_coalesced_with_bind_ok_get_the_bound_limit() -> None:
    """BIND_OK + OPEN + 4 KiB DATA in one read: the DATA is judged by max_frame, not 256."""
    relay, client = _authenticated_pair()
    relay.accept_bind(10000, 60)
    sid = relay.open_stream("203.0.113.9:4444", 0.0)
    payload = bytes(4096)
    assert relay.send_data(sid, payload) is not None
    chunk = b"".join(relay.data_to_send(0.0))
    assert len(chunk) > 4096  # BIND_OK, OPEN and the DATA in one read
    client.receive_data(chunk, 0.0)
    ev = client.events()
    assert S.Bound(10000, 60) in ev
    assert b"".join(e.data for e in ev if isinstance(e, S.StreamData)) == payload
    assert client.state is not State.CLOSED and not client.closed


def test_decoder_limit_applies_per_frame() -> None:
    """The decoder hands out one frame at a time, so a limit change hits the next frame."""
    dec = FrameDecoder(256)
    dec.push(encode(FrameType.PING, payload=bytes(8)) + encode(FrameType.DATA, 0, 1, bytes(1000)))
    first = dec.next_frame()
    assert first is not None and first.type is FrameType.PING
    dec.max_frame = 65536
    second = dec.next_frame()
    assert second is not None and len(second.payload) == 1000
    assert dec.next_frame() is None and dec.buffered == 0
