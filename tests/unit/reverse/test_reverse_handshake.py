"""The reverse tunnel's handshake piece alone: two `Handshake`s joined frame by frame."""

from __future__ import annotations

from typing import Any

import pytest

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.reverse.config import SessionConfig
from trivpn.reverse.events import Authenticated, AuthFailed, BindFailed, BindRequested, Bound, Event
from trivpn.reverse.frames import Frame, FrameDecoder, FrameType, encode
from trivpn.reverse.handshake import Handshake, HandshakeFailed, State
from trivpn.reverse.scheduler import Scheduler

CID = bytes(range(16))


class End:
    """One handshake with its own output queue and event list."""

    def __init__(self, role: str, cfg: SessionConfig | None = None, **kw: Any) -> None:
        self.cfg = cfg or SessionConfig()
        self.sched = Scheduler(self.cfg)
        self.events: list[Event] = []
        args: dict[str, Any] = {"tokens": None, "token": b"", "client_id": b"", "requested_port": 0}
        args.update(kw)
        self.hs = Handshake(role, self.cfg, self.sched, self.events, random=bytes(32), **args)

    def frames(self) -> list[Frame]:
        return FrameDecoder(1 << 20).feed(b"".join(self.sched.take_control()))


def state(end: End) -> State:
    return end.hs.state  # a call, so the type checker does not pin it between steps


def relay_end(**kw: Any) -> End:
    return End("relay", tokens={"alice": b"s3cret", "bob": b"other"}, **kw)


def client_end(token: bytes = b"s3cret", port: int = 0, **kw: Any) -> End:
    return End("client", token=token, client_id=CID, requested_port=port, **kw)


def exchange(a: End, b: End, rounds: int = 6) -> list[HandshakeFailed]:
    """Move frames both ways until quiet; return the failures either side reported."""
    failures = []
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for f in src.frames():
                moved = True
                got = dst.hs.handle(f)
                if got is not None:
                    failures.append(got)
        if not moved:
            break
    return failures


def test_client_opens_with_hello_carrying_its_limits() -> None:
    c = client_end(cfg=SessionConfig(window=4096, max_frame=1 << 20))
    (hello,) = c.frames()
    assert hello.type is FrameType.HELLO
    assert hello.payload[16:32] == CID
    assert int.from_bytes(hello.payload[32:36], "big") == 4096
    assert int.from_bytes(hello.payload[36:40], "big") == 1 << 20


def test_full_handshake_and_bind() -> None:
    r = relay_end(cfg=SessionConfig(heartbeat=7.5, window=8192))
    c = client_end(port=10007)
    assert exchange(c, r) == []
    assert state(r) is State.AUTHENTICATED and state(c) is State.AUTHENTICATED
    assert r.events == [Authenticated("alice", CID), BindRequested(10007)]
    assert c.events == [Authenticated("", CID)]
    assert c.hs.heartbeat == 7.5  # the relay's interval wins
    assert c.hs.peer_window == 8192 and r.hs.peer_window == SessionConfig().start_window
    r.hs.accept_bind(10007, 60)
    assert state(r) is State.BOUND
    assert exchange(c, r) == []
    assert state(c) is State.BOUND and (c.hs.port, c.hs.lease) == (10007, 60)
    assert c.events[-1] == Bound(10007, 60)


def test_matching_token_name_is_reported() -> None:
    r = relay_end()
    c = client_end(token=b"other")
    exchange(c, r)
    assert r.hs.name == "bob"


def test_wrong_token_fails_on_both_sides_without_exception() -> None:
    r = relay_end()
    c = client_end(token=b"wrong")
    failures = exchange(c, r)
    assert HandshakeFailed("authentication failed: wrong token", by_peer=False) in failures
    assert (
        HandshakeFailed("authentication failed: the relay rejected the token", by_peer=True)
        in failures
    )
    assert any(isinstance(e, AuthFailed) for e in r.events)
    assert any(isinstance(e, AuthFailed) for e in c.events)


def test_forged_relay_proof_is_a_protocol_error() -> None:
    r = relay_end()
    c = client_end()
    for f in c.frames():
        r.hs.handle(f)  # HELLO
    for f in r.frames():
        c.hs.handle(f)  # HELLO_ACK
    for f in c.frames():
        r.hs.handle(f)  # AUTH
    (auth_ok,) = r.frames()
    forged = FrameDecoder(1 << 20).feed(
        encode(FrameType.AUTH_OK, payload=bytes(b ^ 1 for b in auth_ok.payload))
    )[0]
    with pytest.raises(RemoteProtocolError, match="prove"):
        c.hs.handle(forged)


def test_reject_bind_sends_bind_err_and_ends() -> None:
    r = relay_end()
    c = client_end(port=5)
    exchange(c, r)
    failed = r.hs.reject_bind("port 5 is outside 10000-10099")
    assert failed == HandshakeFailed("bind refused: port 5 is outside 10000-10099", False)
    (bind_err,) = r.frames()
    assert bind_err.type is FrameType.BIND_ERR
    assert c.hs.handle(bind_err) == HandshakeFailed(
        "the relay refused the bind: port 5 is outside 10000-10099", by_peer=True
    )
    assert isinstance(c.events[-1], BindFailed)


def test_bind_answers_only_after_a_bind_request() -> None:
    r = relay_end()
    with pytest.raises(LocalProtocolError, match="accept_bind in state INIT"):
        r.hs.accept_bind(1, 1)
    with pytest.raises(LocalProtocolError, match="reject_bind in state INIT"):
        r.hs.reject_bind("no")


@pytest.mark.parametrize(
    "ftype, payload",
    [
        (FrameType.AUTH, bytes(96)),  # before HELLO
        (FrameType.BIND, b"\x00\x00"),
        (FrameType.HELLO_ACK, bytes(44)),  # a client's frame type sent to the relay
    ],
)
def test_frames_out_of_order_are_refused_by_the_relay(ftype: FrameType, payload: bytes) -> None:
    r = relay_end()
    f = FrameDecoder(1 << 20).feed(encode(ftype, payload=payload))[0]
    with pytest.raises(RemoteProtocolError, match="not allowed in state INIT \\(relay side\\)"):
        r.hs.handle(f)


def test_peer_limits_and_heartbeat_are_range_checked() -> None:
    c = client_end()
    bad = FrameDecoder(1 << 20).feed(
        encode(
            FrameType.HELLO_ACK,
            payload=bytes(32) + (4096).to_bytes(4, "big") + (1 << 20).to_bytes(4, "big") + bytes(4),
        )
    )[0]
    with pytest.raises(RemoteProtocolError, match="heartbeat interval 0 ms"):
        c.hs.handle(bad)
    r = relay_end()
    tiny_window = FrameDecoder(1 << 20).feed(
        encode(
            FrameType.HELLO,
            payload=bytes(32) + (10).to_bytes(4, "big") + (1 << 20).to_bytes(4, "big"),
        )
    )[0]
    with pytest.raises(RemoteProtocolError, match="peer window 10 out of range"):
        r.hs.handle(tiny_window)


def test_constructor_checks() -> None:
    with pytest.raises(LocalProtocolError, match="random"):
        Handshake(
            "relay", SessionConfig(), Scheduler(SessionConfig()), [],
            tokens={"a": b"t"}, token=b"", client_id=b"", requested_port=0, random=b"short",
        )  # fmt: skip
    with pytest.raises(LocalProtocolError, match="client id"):
        End("client", token=b"t", client_id=b"x")
    with pytest.raises(LocalProtocolError, match="non-empty token"):
        End("relay", tokens={"a": b""})
