"""Unproven connections (the tunnel port's pre-auth ones, the name-routed ports' ones
waiting for their head) per source, IPv6 per /64, with a fair eviction when full: neither
one source nor a crowd of them can lock everyone else out. Counted over loopback, the
sources simulated by binding clients to 127.0.1.x."""

from __future__ import annotations

import logging
import re
import secrets
import socket

import pytest
import trio
from helpers.reverse_http import (
    DOMAIN,
    HOST,
    http_get,
    start_expose,
    start_relay,
    start_service,
    wait_until,
)

from trivpn.reverse import events as E
from trivpn.reverse.guard import GuardConfig, LogBudget, PendingTable, SourceGuard, source_key
from trivpn.reverse.relay import Relay, RelayConfig
from trivpn.reverse.session import Session, SessionConfig

TOKEN = b"0123456789abcdef-token"


class Conn:
    """A pending connection's handle that remembers being evicted."""

    def __init__(self) -> None:
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True


def test_source_key_counts_ipv6_per_64() -> None:
    assert source_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"  # IPv4-mapped: the IPv4 address
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("?") == "?"


def test_full_table_keeps_a_fair_share_per_source() -> None:
    """20 sources x 32 into 512 slots: before, the first 16 sources held all 512 and
    everyone after was refused; now each holds 25 or 26 and a new source still gets in."""
    t = PendingTable(512, 32)
    conns = {f"127.0.1.{i}": [Conn() for _ in range(32)] for i in range(1, 21)}
    refused = sum(t.admit(src, c) is not None for src, cs in conns.items() for c in cs)
    held = sorted(t.held_by(src) for src in conns)
    assert (t.count, t.evicted, refused) == (512, 109, 19)  # figures
    assert held == [25] * 8 + [26] * 12
    evicted = [c for cs in conns.values() for c in cs if c.evicted]
    assert len(evicted) == 109 and all(not t.remove(src, c) for src in conns for c in evicted)
    newcomer = Conn()
    assert t.admit("198.51.100.7", newcomer) is None  # a reconnecting expose gets in
    assert t.count == 512 and t.evicted == 110
    assert t.remove("198.51.100.7", newcomer) and t.count == 511


def test_one_ipv6_host_cannot_fill_the_pre_auth_table() -> None:
    """600 addresses of one /64: 32 admitted (before: 512, the whole table); another
    /64 still gets in."""
    g = SourceGuard()
    got = [g.admit(f"2001:db8:0:1::{i:x}", 0.0) for i in range(1, 601)]
    assert got.count(None) == 32 and g.pre_auth == 32
    assert g.admit("2001:db8:0:2::1", 0.0) is None
    for i in range(1, 33):
        g.left(f"2001:db8:0:1::{i:x}")
    assert g.pre_auth == 1


def test_log_budget_writes_one_line_then_a_count() -> None:
    b = LogBudget(10.0)
    written = [b.allow(i / 1000) for i in range(1000)]  # 1,000 events within 1 s
    assert written.count(True) == 1 and written[0]
    assert b.due(5.0) == 0  # the interval is not over
    assert b.due(10.0) == 999 and b.due(30.0) == 0  # figure: 999 reported in one line
    assert b.allow(30.0)


# ------------------------------------------------------------------------ over loopback


def idle_from(source: str, port: int, n: int) -> list[socket.socket]:
    """n connections from `source` (a 127/8 address) that send nothing."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.setblocking(False)
        s.connect_ex((HOST, port))
        out.append(s)
    return out


def closed(socks: list[socket.socket]) -> int:
    n = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                n += 1
        except BlockingIOError:
            pass
        except OSError:
            n += 1
    return n


async def login(port: int, source: str) -> int:
    """A client from `source` authenticates and binds; its port (0: it could not)."""
    session = Session(
        "client", trio.current_time(), SessionConfig(), token=TOKEN, client_id=secrets.token_bytes(16)
    )
    try:
        stream = await trio.open_tcp_stream(HOST, port, local_address=source)
    except OSError:
        return 0
    async with stream:
        with trio.move_on_after(5):
            for _ in range(20):
                out = b"".join(session.data_to_send(trio.current_time()))
                if out:
                    await stream.send_all(out)
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return 0
                if not data:
                    return 0
                session.receive_data(data, trio.current_time())
                for ev in session.events():
                    if isinstance(ev, E.Bound):
                        return ev.port
    return 0


async def test_a_crowd_of_sources_cannot_lock_the_tunnel_port() -> None:
    """10 sources x 8 idle connections against 64 pre-auth slots (8 per source): the relay
    holds 64, 6 or 7 per source, and a client from an 11th source still logs in and
    binds, evicting one (before: it was closed at once, as every reconnecting expose was)."""
    relay = Relay(
        RelayConfig(
            host=HOST,
            port=0,
            start_port=40100,
            end_port=40101,
            tokens={"alice": TOKEN},
            guard=GuardConfig(max_pre_auth=64, max_pre_auth_per_source=8),
        )
    )
    socks: list[socket.socket] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(relay.serve)
            for i in range(1, 11):
                socks += idle_from(f"127.0.1.{i}", port, 8)
            await wait_until(lambda: relay.guard.pre_auth == 64 and closed(socks) == 16)
            held = sorted(relay.guard.table.held_by(f"127.0.1.{i}") for i in range(1, 11))
            assert held == [6] * 6 + [7] * 4  # figure: a fair share each, whatever the order
            evicted = relay.guard.table.evicted
            bound = await login(port, "127.0.2.1")
            assert bound in (40100, 40101)  # figure: the 81st connection got a port
            assert relay.guard.table.evicted == evicted + 1
            await wait_until(lambda: closed(socks) == 17)  # the evicted one was closed
            nursery.cancel_scope.cancel()
    for s in socks:
        s.close()


async def test_one_source_cannot_lock_the_http_port(caplog: pytest.LogCaptureFixture) -> None:
    """300 idle connections from 127.0.1.1 to the HTTP port: 32 held (the per-source
    share), 268 refused at once, one WARNING line plus one with the count of the rest;
    a request from 127.0.0.1 still gets through (before: 256 held, it was refused)."""
    caplog.set_level(logging.WARNING, logger="trivpn.reverse")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, https=True)
            router = relay.router
            assert router is not None
            router.refusal_log[False].interval = 1.0
            api = await start_service(nursery, "api")
            await start_expose(nursery, relay, api.port, "api")
            socks = idle_from("127.0.1.1", router.http_port, 300)
            await wait_until(lambda: router.pending == 32 and closed(socks) == 268)
            assert router.rejected == 268 and router.tables[False].held_by("127.0.1.1") == 32
            got = await http_get(router.http_port, f"api.{DOMAIN}", "/ok")
            assert got.startswith(b"HTTP/1.1 200"), got[:80]

            def reported() -> int:
                n = 0
                for r in caplog.records:
                    msg = r.getMessage()
                    if "refused:" in msg:
                        n += 1
                    elif m := re.match(r"(\d+) more public HTTP connections", msg):
                        n += int(m.group(1))
                return n

            await wait_until(lambda: reported() == 268, 5.0)  # every refusal accounted for
            lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(lines) <= 4  # figure: 268 refusals in at most 4 lines (before: none)
            for s in socks:
                s.close()
            nursery.cancel_scope.cancel()


async def test_crowds_on_either_port_leave_room_for_a_new_source() -> None:
    """16 slots per port, 4 per source. 8 sources x 4 idle on the HTTPS port hold its 16
    slots and leave the HTTP port alone (before: one counter for both); 8 more sources
    fill the HTTP port too, and a request from a new source still gets through by
    evicting the oldest of the most-represented source."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, https=True, max_pending=16, max_pending_per_source=4)
            router = relay.router
            assert router is not None
            api = await start_service(nursery, "api")
            await start_expose(nursery, relay, api.port, "api")
            tls = [s for i in range(1, 9) for s in idle_from(f"127.0.1.{i}", router.https_port, 4)]
            await wait_until(lambda: router.tables[True].count == 16 and closed(tls) == 16)
            assert router.tables[False].count == 0
            got = await http_get(router.http_port, f"api.{DOMAIN}", "/ok")
            assert got.startswith(b"HTTP/1.1 200"), got[:80]
            web = [s for i in range(9, 17) for s in idle_from(f"127.0.1.{i}", router.http_port, 4)]
            await wait_until(lambda: router.tables[False].count == 16 and closed(web) == 16)
            evicted = router.tables[False].evicted
            got = await http_get(router.http_port, f"api.{DOMAIN}", "/ok")
            assert got.startswith(b"HTTP/1.1 200"), got[:80]  # figure: the 33rd got through
            assert router.tables[False].evicted == evicted + 1
            for s in tls + web:
                s.close()
            nursery.cancel_scope.cancel()
