"""ifconfig-pool-persist: parsing, writing and loading into the pool."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.server.pool import AddressPool, IfconfigPush, Lease, PersistEntry, pool_for_server
from trivpn.server.pool_persist import (
    MAX_PERSIST_BYTES,
    dump_persist,
    parse_persist,
    serialize_persist,
)

NET8 = IPv4Network("10.8.0.0/24")
NET9 = IPv4Network("10.9.0.0/24")
NET6 = IPv6Network("fd00:8::/64")


def options(lease: Lease) -> list[str]:
    return [p.option for p in lease.pushes()]


def subnet_pool() -> AddressPool:
    return pool_for_server(NET8, "subnet", NET6)


# ---- ifconfig-pool-persist ------------------------------------------------------------


def test_persist_round_trip_gives_cn_its_address_back() -> None:
    pool = subnet_pool()
    a = pool.acquire("client1")
    pool.acquire("client2")
    pool.release(a, now=5.0)
    text, skipped = dump_persist(pool)
    assert skipped == 0
    assert text == "client1,10.8.0.2,fd00:8::1000\nclient2,10.8.0.3,fd00:8::1001\n"
    parsed = parse_persist(text.encode())
    assert parsed.bad_lines == 0
    restarted = subnet_pool()
    assert restarted.load_persist(list(parsed.entries), fixed=False, now=100.0) == []
    newcomer = restarted.acquire("stranger")  # never-used entries are older than loaded ones
    assert newcomer.handle == 2
    assert restarted.acquire("client2").ipv4 == IfconfigPush(
        IPv4Address("10.8.0.3"), IPv4Address("255.255.255.0")
    )


def test_persist_net30_stores_the_slash30_base() -> None:
    pool = pool_for_server(NET9, "net30")
    pool.acquire("c1")
    pool.acquire("c2")
    assert dump_persist(pool) == ("c1,10.9.0.4,\nc2,10.9.0.8,\n", 0)
    again = pool_for_server(NET9, "net30")
    again.load_persist(list(parse_persist(b"c2,10.9.0.8,\n").entries), fixed=False, now=0.0)
    assert options(again.acquire("c2")) == ["ifconfig 10.9.0.10 10.9.0.9"]


def test_persist_tolerates_bad_lines() -> None:
    data = (
        b"# comment\n; other comment\n\n"
        b"good,10.8.0.5,\n"
        b"v6only,,fd00:8::1009\r\n"
        b"noaddr,,\n"
        b"bad,10.8.0.999,\n"
        b"onlycn\n"
        b",10.8.0.6,\n"
        b"many,1.2.3.4,fd00::1,x\n"
        b"\xff\xfe,10.8.0.7,\n" + b"x" * 600 + b",10.8.0.8,\n"
    )
    parsed = parse_persist(data)
    assert [e.common_name for e in parsed.entries] == ["good", "v6only"]
    assert parsed.bad_lines == 7 and len(parsed.warnings) == 7
    pool = subnet_pool()
    warnings = pool.load_persist(
        [
            *parsed.entries,
            PersistEntry("far", IPv4Address("10.9.9.9"), None),
            PersistEntry("mismatch", IPv4Address("10.8.0.10"), IPv6Address("fd00:8::1000")),
        ],
        fixed=False,
        now=0.0,
    )
    assert len(warnings) == 2
    assert pool.acquire("v6only").handle == 9
    assert pool.acquire("mismatch").handle == 8  # IPv4 wins, as in OpenVPN


def test_persist_size_bound() -> None:
    parsed = parse_persist(b"a,10.8.0.2,\n" * (MAX_PERSIST_BYTES // 12 + 10))
    assert parsed.bad_lines >= 1 and "larger" in parsed.warnings[0]
    assert len(parsed.entries) <= MAX_PERSIST_BYTES // 12 + 1


def test_persist_fixed_entries_are_reserved_for_their_cn() -> None:
    pool = subnet_pool()
    pool.load_persist([PersistEntry("vip", IPv4Address("10.8.0.2"), None)], fixed=True, now=0.0)
    assert pool.acquire("someone").handle == 1
    assert pool.acquire("vip").handle == 0


def test_serialize_skips_unwritable_names() -> None:
    entries = [
        PersistEntry("a,b", IPv4Address("10.0.0.1"), None),
        PersistEntry("#x", IPv4Address("10.0.0.2"), None),
        PersistEntry("ok", None, IPv6Address("fd00::2")),
    ]
    assert serialize_persist(entries) == ("ok,,fd00::2\n", 2)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_persist_never_raises(data: bytes) -> None:
    parsed = parse_persist(data)
    assert parsed.bad_lines >= 0
    pool = subnet_pool()
    pool.load_persist(list(parsed.entries), fixed=False, now=0.0)
