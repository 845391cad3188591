"""atheris harness for the reverse-tunnel frame decoder and session cores.

Invariants: arbitrary bytes fed to a relay session (before and after authentication) and
to a client session raise only RemoteProtocolError, never anything else; a session that
raised is closed and says GOAWAY; bytes fed in any split give the same result.

The seed corpus (`fuzz/make_corpus.py`) is what real sessions send: the client's
handshake flight, and what a bound client and a bound relay send each other (opens, data,
window updates, pings, FIN, RST, GOAWAY). Every session here is deterministic (fixed
randoms), so the captured AUTH frame authenticates a fresh relay. `REACHED` counts the
inputs from which the frame decoder returned frames for the session to handle.

Run (atheris is optional and imported only in main())::

    python -m pip install atheris
    python fuzz/fuzz_reverse_frames.py -max_total_time=300 [corpus_dir]
"""

from __future__ import annotations

import sys
from collections import Counter

from trivpn.errors import RemoteProtocolError
from trivpn.reverse.frames import PRE_AUTH_MAX_FRAME, FrameDecoder
from trivpn.reverse.session import Session, SessionConfig, State

CID = bytes(range(16))
TOKEN = b"fuzz-token"
CONFIG = SessionConfig(window=4096, chunk=1024)
#: Inputs that reached each stage (reset by whoever wants a count).
REACHED: Counter[str] = Counter()


def fresh_relay() -> Session:
    """A relay before the handshake, with a fixed challenge (so a captured AUTH is valid)."""
    return Session("relay", 0.0, CONFIG, tokens={"f": TOKEN}, random=bytes(32))


def bound_pair(record: list[tuple[str, bytes]] | None = None) -> tuple[Session, Session]:
    """A relay and a client through HELLO, AUTH, BIND and one OPEN; `record` gets every
    (direction, bytes) that crossed, "up" being client to relay."""

    def move(src: Session, dst: Session, direction: str) -> None:
        data = b"".join(src.data_to_send(0.0))
        if data and record is not None:
            record.append((direction, data))
        dst.receive_data(data, 0.0)

    relay = fresh_relay()
    client = Session("client", 0.0, CONFIG, token=TOKEN, client_id=CID, random=bytes(32))
    for _ in range(4):
        move(client, relay, "up")
        move(relay, client, "down")
    relay.events()
    relay.accept_bind(10000, 60)
    move(relay, client, "down")
    relay.open_stream("peer", 0.0)
    move(relay, client, "down")
    return relay, client


def _count_frames(data: bytes, cut: int, limit: int, stage: str) -> None:
    """Count the input if the session's decoder (same class, same limit) returns frames."""
    decoder = FrameDecoder(limit)
    try:
        if decoder.feed(data[:cut]) or decoder.feed(data[cut:]):
            REACHED[stage] += 1
    except RemoteProtocolError:
        pass


def _feed(sess: Session, data: bytes, cut: int) -> None:
    try:
        sess.receive_data(data[:cut], 1.0)
        sess.receive_data(data[cut:], 1.0)
    except RemoteProtocolError:
        if not sess.closed:
            raise AssertionError("session raised but stayed open") from None
    sess.events()
    sess.data_to_send(1.0)
    sess.handle_timer(2.0)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, cut = data[0] % 4, (data[0] >> 2) % max(1, len(data))
    body = data[1:]
    if mode == 0:
        try:
            if FrameDecoder(1 << 16).feed(body):
                REACHED["decoder alone: frames"] += 1
        except RemoteProtocolError:
            pass
    elif mode == 1:
        relay = fresh_relay()
        _count_frames(body, cut, PRE_AUTH_MAX_FRAME, "fresh relay: frames handled")
        _feed(relay, body, cut)
        if relay.state in (State.AUTHENTICATED, State.BOUND):
            REACHED["fresh relay: authenticated"] += 1
    else:
        relay, client = bound_pair()
        sess = relay if mode == 2 else client
        _count_frames(body, cut, CONFIG.max_frame, f"bound {sess.role}: frames handled")
        _feed(sess, body, cut)


def main() -> None:
    import atheris  # type: ignore[import-untyped]  # optional, ships no type stubs

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
