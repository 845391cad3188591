"""Issue 15: taking over a session needs proof, not the token + the client id sent in
clear in HELLO (commit and reveal, see handshake.py), over loopback against the real
relay with client cores driven by hand."""

from __future__ import annotations

import struct

import trio

from trivpn.errors import RemoteProtocolError
from trivpn.reverse import events as E
from trivpn.reverse.frames import ErrorCode, FrameDecoder, FrameType, encode
from trivpn.reverse.handshake import (
    TAKEOVER_REFUSED,
    auth_mac,
    key_commitment,
    takeover_proven,
)
from trivpn.reverse.relay import Relay, RelayConfig
from trivpn.reverse.session import Session, SessionConfig, State

TOKEN = b"0123456789abcdef-shared"
CID = bytes(range(16))
K0, K1, K2, K3 = (bytes([i]) * 32 for i in range(4))


class Client:
    """One client core over one TCP connection, stepped by the test."""

    def __init__(self, stream: trio.SocketStream, resume: bytes, nxt: bytes) -> None:
        self.stream = stream
        self.core = Session(
            "client",
            trio.current_time(),
            SessionConfig(),
            token=TOKEN,
            client_id=CID,
            resume_key=resume,
            next_key=nxt,
        )
        self.events: list[E.Event] = []

    async def step(self) -> None:
        out = b"".join(self.core.data_to_send(trio.current_time()))
        if out:
            await self.stream.send_all(out)
        data = await self.stream.receive_some(65536)
        if not data:
            self.core.receive_eof(trio.current_time())
        else:
            try:
                self.core.receive_data(data, trio.current_time())
            except RemoteProtocolError:
                pass
        self.events += self.core.events()

    async def until(self, done: type) -> None:
        for _ in range(50):  # bounded
            if any(isinstance(e, done | E.SessionClosed) for e in self.events):
                return
            await self.step()


async def _connect(port: int, resume: bytes, nxt: bytes) -> Client:
    return Client(await trio.open_tcp_stream("127.0.0.1", port), resume, nxt)


def test_commitment_and_proof() -> None:
    assert takeover_proven(key_commitment(K1), K1)
    assert not takeover_proven(key_commitment(K1), K2)
    assert not takeover_proven(key_commitment(K1), key_commitment(K1))


async def test_bare_client_id_replay_is_refused_the_key_holder_takes_over() -> None:
    """Before: token + client id (both known to any holder of a shared token who saw the
    HELLO) took over a live session and its port. Now: refused (BIND_ERR) unless the new
    session reveals the key the bound one committed to; the owner itself still can."""
    relay = Relay(
        RelayConfig(host="127.0.0.1", port=0, start_port=41200, end_port=41210, tokens={"t": TOKEN})
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(relay.serve)
            first = await _connect(port, K0, K1)
            await first.until(E.Bound)
            bound = [e for e in first.events if isinstance(e, E.Bound)]
            assert bound and first.core.state is State.BOUND

            thief = await _connect(port, K0, K3)  # replays id and even the spent key K0
            await thief.until(E.BindFailed)
            failed = [e for e in thief.events if isinstance(e, E.BindFailed)]
            assert failed and TAKEOVER_REFUSED in failed[0].reason
            assert not first.core.closed  # the victim kept its session

            owner = await _connect(port, K1, K2)  # reveals what `first` committed to
            await owner.until(E.Bound)
            again = [e for e in owner.events if isinstance(e, E.Bound)]
            assert again and again[0].port == bound[0].port  # same port, taken over
            await first.until(E.SessionClosed)
            closed = [e for e in first.events if isinstance(e, E.SessionClosed)]
            assert closed and closed[0].code == ErrorCode.REPLACED

            late = await _connect(port, K1, K3)  # K1 is spent now: a replay of it fails
            await late.until(E.BindFailed)
            assert any(isinstance(e, E.BindFailed) for e in late.events)
            nursery.cancel_scope.cancel()


def test_older_client_still_authenticates_but_cannot_take_over_a_proven_session() -> None:
    """An older trivpn sends the 32-byte AUTH (the MAC alone): it still logs in, and it may
    take over only an owner that left no commitment (as before); an owner whose last
    session committed to a key is protected from it."""
    relay = Session("relay", 0.0, SessionConfig(), tokens={"t": TOKEN})
    nonce = bytes(16)
    hello = struct.pack("!16s16sII", nonce, CID, 65536, 1 << 20)
    relay.receive_data(encode(FrameType.HELLO, payload=hello), 0.0)
    (ack,) = FrameDecoder(1 << 20).feed(b"".join(relay.data_to_send(0.0)))
    challenge = ack.payload[:32]
    legacy = auth_mac(TOKEN, b"trivpn-reverse-v1 client", challenge, nonce, CID)
    relay.receive_data(encode(FrameType.AUTH, payload=legacy), 0.0)
    (auth,) = [e for e in relay.events() if isinstance(e, E.Authenticated)]
    assert auth.client_id == CID and auth.reveal == b"" and auth.commit == b""

    r = Relay(
        RelayConfig(host="127.0.0.1", port=0, start_port=41220, end_port=41230, tokens={"t": TOKEN})
    )
    owner = ("t", CID)
    r.allocator.assign(owner, 0, 0.0)  # the owner holds a port
    assert r.takeover_refused(owner, b"") is None  # it left no commitment: legacy rules
    r.remember_commit(owner, key_commitment(K1))
    why = r.takeover_refused(owner, b"")
    assert why is not None and TAKEOVER_REFUSED in why
    assert r.takeover_refused(owner, K1) is None


def test_client_hint_when_the_relay_refuses_the_handshake() -> None:
    client = Session("client", 0.0, token=TOKEN, client_id=CID)
    client.data_to_send(0.0)
    goaway = encode(FrameType.GOAWAY, payload=b"\x00\x00\x00\x01HELLO frame of 40 bytes")
    client.receive_data(goaway, 0.0)
    (closed,) = [e for e in client.events() if isinstance(e, E.SessionClosed)]
    assert "older trivpn" in closed.reason
