"""Two sans-IO reverse-tunnel sessions (relay and client) wired to each other in memory:
the steps the flow-control tests share (test_reverse_windows, test_reverse_credit)."""

from __future__ import annotations

from trivpn.reverse import session as S
from trivpn.reverse.scheduler import BufferPool
from trivpn.reverse.session import Session, SessionConfig, State

TOKEN = b"0123456789abcdef-sessions"
CID = bytes(range(16))


def pump(a: Session, b: Session, now: float = 0.0, rounds: int = 400) -> list[S.Event]:
    """Move bytes both ways until quiet (at most `rounds`); return b's events (a's stay queued)."""
    eb: list[S.Event] = []
    for _ in range(rounds):
        out_a = b"".join(a.data_to_send(now))
        if out_a:
            b.receive_data(out_a, now)
        out_b = b"".join(b.data_to_send(now))
        if out_b:
            a.receive_data(out_b, now)
        eb += b.events()
        if not out_a and not out_b:
            break
    return eb


def bound(cfg: SessionConfig, pool: BufferPool | None = None) -> tuple[Session, Session]:
    """A relay and a client session, authenticated and bound to port 10000."""
    relay = Session("relay", 0.0, cfg, tokens={"a": TOKEN}, pool=pool)
    client = Session("client", 0.0, cfg, token=TOKEN, client_id=CID)
    pump(client, relay)
    relay.accept_bind(10000, 60)
    pump(relay, client)
    relay.events()
    client.events()
    assert relay.state is State.BOUND and client.state is State.BOUND
    return relay, client


def open_streams(relay: Session, client: Session, n: int) -> list[int]:
    """`n` public connections opened by the relay and accepted by the client."""
    sids = [relay.open_stream(f"198.51.100.1:{i}", 0.0) for i in range(n)]
    pump(relay, client)
    for sid in sids:
        client.accept_stream(sid)
    pump(client, relay)
    relay.events()
    client.events()
    return sids
