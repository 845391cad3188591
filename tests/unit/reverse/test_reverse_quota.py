"""Port quotas per token and short leases for idle sessions (issue 15): throw-away logins
must not park the relay's port range."""

from __future__ import annotations

import secrets

import pytest
import trio
from helpers.reverse import free_port

from trivpn.reverse import events as E
from trivpn.reverse.ports import PortAllocator, PortUnavailable
from trivpn.reverse.relay import ClientLimits, Relay, RelayConfig
from trivpn.reverse.session import Session, SessionConfig

TOKEN = b"0123456789abcdef-token"
HOST = "127.0.0.1"


def _throwaway_logins(pa: PortAllocator, n: int, now: float, used: bool) -> None:
    """`n` clients with fresh ids under one token: each binds, then leaves."""
    for _ in range(n):
        owner = ("alice", secrets.token_bytes(16))
        try:
            port, _ = pa.assign(owner, 0, now)
        except PortUnavailable:
            continue
        pa.release(port, owner, now, used=used)


def test_throwaway_logins_no_longer_lease_the_whole_range() -> None:
    # before: no quota, a full lease even without a stream -> 10 of 10 ports leased for 60 s
    before = PortAllocator(100, 109, lease=60, idle_lease=60, default_quota=1000)
    _throwaway_logins(before, 10, 0.0, used=False)
    assert len(before.leased(30.0)) == 10  # figure: the whole range, still at t = 30 s
    # after: quota 4 per token, idle ports leased for the 5 s grace only
    after = PortAllocator(100, 109, lease=60)
    _throwaway_logins(after, 10, 0.0, used=False)
    assert len(after.held("alice", 0.0)) == 4  # figure: 4 of 10 ports, at most the quota
    assert len(after.leased(5.0)) == 0  # figure: none after the grace
    # another token is never short of ports
    assert after.assign(("bob", b"b" * 16), 0, 1.0)[0] in range(100, 110)


def test_a_used_port_keeps_its_full_lease() -> None:
    pa = PortAllocator(100, 109, lease=60)
    a = ("alice", b"a" * 16)
    port, _ = pa.assign(a, 0, 0.0)
    assert pa.release(port, a, 0.0, used=True) == 60
    assert pa.leased(59.0) == [port]
    assert pa.assign(a, 0, 59.0) == (port, False)
    assert pa.release(port, a, 60.0, used=False) == 5.0
    assert pa.leased(64.9) == [port] and pa.leased(65.0) == []


def test_quota_evicts_the_oldest_lease_then_refuses() -> None:
    pa = PortAllocator(100, 109, default_quota=2, quotas={"big": 5})
    a1, a2, a3 = (("alice", bytes([i]) * 16) for i in range(3))
    p1, _ = pa.assign(a1, 0, 0.0)
    p2, _ = pa.assign(a2, 0, 1.0)
    pa.release(p1, a1, 2.0)
    pa.release(p2, a2, 3.0)
    p3, _ = pa.assign(a3, 0, 4.0)  # over the quota: a1's older lease goes
    assert pa.held("alice", 4.0) == sorted([p2, p3])
    assert pa.port_of(a1) is None
    a4 = ("alice", b"\x04" * 16)
    pa.assign(a4, 0, 5.0)  # evicts a2's lease; now a3 and a4 use both ports
    with pytest.raises(PortUnavailable, match="quota of 2"):
        pa.assign(("alice", b"\x05" * 16), 0, 6.0)
    assert pa.assign(a3, 0, 7.0)[1]  # its own port again (a takeover) is always fine
    for i in range(5):
        pa.assign(("big", bytes([i]) * 16), 0, 8.0)
    assert len(pa.held("big", 8.0)) == 5


async def _login_and_leave(port: int) -> int:
    """A client with a fresh id authenticates, binds, and hangs up; returns its port."""
    session = Session(
        "client",
        trio.current_time(),
        SessionConfig(),
        token=TOKEN,
        client_id=secrets.token_bytes(16),
    )
    stream = await trio.open_tcp_stream(HOST, port)
    got = 0
    async with stream:
        for _ in range(20):
            out = b"".join(session.data_to_send(trio.current_time()))
            if out:
                await stream.send_all(out)
            if got or session.closed:
                break
            data = await stream.receive_some(65536)
            if not data:
                break
            session.receive_data(data, trio.current_time())
            for ev in session.events():
                if isinstance(ev, E.Bound):
                    got = ev.port
    return got


async def test_relay_throwaway_logins_hold_at_most_the_quota() -> None:
    """10 throw-away logins against a relay with a 10-port range: at most 4 ports held,
    none once the idle grace is over (before: all 10 leased for 60 s)."""
    relay = Relay(
        RelayConfig(
            host=HOST,
            port=0,
            start_port=(start := free_port()),
            end_port=start + 9,
            tokens={"alice": TOKEN},
            idle_lease=0.5,
            clients={"alice": ClientLimits(port_quota=4)},
        )
    )
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            tport = await nursery.start(relay.serve)
            ports = [await _login_and_leave(tport) for _ in range(10)]
            assert all(ports)  # every login got a port (evicting the oldest leases)
            for _ in range(500):  # until the relay saw the last one leave (bounded)
                if not relay.by_owner:
                    break
                await trio.sleep(0.01)
            held = relay.allocator.held("alice", trio.current_time())
            print(f"throw-away logins: 10, ports held after: {len(held)} of 10")
            assert len(held) <= 4  # figure: at most the quota (before: 10)
            later = trio.current_time() + 0.5  # the idle grace (0.5 s here) is over
            assert relay.allocator.leased(later) == []  # figure: 0
            nursery.cancel_scope.cancel()
