"""atheris harness for the reverse-tunnel frame decoder and session cores.

Invariants: arbitrary bytes fed to a relay session (before and after authentication) and
to a client session raise only RemoteProtocolError, never anything else; a session that
raised is closed and says GOAWAY; bytes fed in any split give the same result.

Run (atheris is optional and imported only in main())::

    python -m pip install atheris
    python fuzz/fuzz_reverse_frames.py -max_total_time=300 [corpus_dir]
"""

from __future__ import annotations

import sys

from trivpn.errors import RemoteProtocolError
from trivpn.reverse.frames import FrameDecoder
from trivpn.reverse.session import Session, SessionConfig

CID = bytes(range(16))
TOKEN = b"fuzz-token"


def _bound_pair() -> tuple[Session, Session]:
    cfg = SessionConfig(window=4096, chunk=1024)
    relay = Session("relay", 0.0, cfg, tokens={"f": TOKEN}, random=bytes(32))
    client = Session("client", 0.0, cfg, token=TOKEN, client_id=CID, random=bytes(32))
    for _ in range(4):
        relay.receive_data(b"".join(client.data_to_send(0.0)), 0.0)
        client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)
    relay.events()
    relay.accept_bind(10000, 60)
    client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)
    relay.open_stream("peer", 0.0)
    client.receive_data(b"".join(relay.data_to_send(0.0)), 0.0)
    return relay, client


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
            FrameDecoder(1 << 16).feed(body)
        except RemoteProtocolError:
            pass
    elif mode == 1:
        _feed(Session("relay", 0.0, tokens={"f": TOKEN}), body, cut)
    elif mode == 2:
        relay, _ = _bound_pair()
        _feed(relay, body, cut)
    else:
        _, client = _bound_pair()
        _feed(client, body, cut)


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
