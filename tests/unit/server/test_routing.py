"""The internal multiplexer: longest-prefix routing, source checks, client-to-client."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.server.routing import (
    Drop,
    DropReason,
    LearnAddress,
    RouteLimitExceeded,
    Router,
    ToClient,
    ToTun,
    packet_addresses,
)


def ip4(src: str, dst: str, payload: bytes = b"\x08\x00\x00\x00\x00\x00\x00\x00") -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0,
        64,
        1,
        0,
        IPv4Address(src).packed,
        IPv4Address(dst).packed,
    )
    return header + payload


def ip6(src: str, dst: str, payload: bytes = b"\x80\x00\x00\x00") -> bytes:
    head = struct.pack("!IHBB", 0x60000000, len(payload), 58, 64)
    return head + IPv6Address(src).packed + IPv6Address(dst).packed + payload


def populated() -> Router[str]:
    r: Router[str] = Router()
    r.learn("c1", IPv4Address("10.8.0.2"), "client1")
    r.learn("c1", IPv6Address("fd00:8::1000"), "client1")
    r.learn("c2", IPv4Address("10.8.0.3"), "client2")
    r.learn("c2", IPv4Network("192.168.77.0/24"), "client2")
    r.learn("c3", IPv4Address("10.8.0.4"), "client3")
    r.learn("c3", IPv4Network("192.168.0.0/16"), "client3")
    r.learn("c3", IPv6Network("fd00:77::/48"), "client3")
    return r


def test_packet_addresses() -> None:
    assert packet_addresses(ip4("1.2.3.4", "5.6.7.8")) == (b"\x01\x02\x03\x04", b"\x05\x06\x07\x08")
    src, dst = packet_addresses(ip6("fd00::1", "fd00::2")) or (b"", b"")
    assert ip_address(src) == IPv6Address("fd00::1") and ip_address(dst) == IPv6Address("fd00::2")
    assert packet_addresses(b"") is None
    assert packet_addresses(ip4("1.2.3.4", "5.6.7.8")[:19]) is None
    assert packet_addresses(b"\x44" + bytes(19)) is None  # IHL below 5
    assert packet_addresses(ip6("fd00::1", "fd00::2")[:39]) is None
    assert packet_addresses(b"\x50" + bytes(40)) is None


def test_learn_events_match_learn_address() -> None:
    r: Router[str] = Router()
    assert r.learn("c1", IPv4Address("10.8.0.2"), "client1") == LearnAddress(
        "add", "10.8.0.2", "client1"
    )
    assert r.learn("c1", IPv6Address("fd00:8::1000"), "client1") == LearnAddress(
        "add", "fd00:8::1000", "client1"
    )
    assert r.learn("c1", IPv4Address("10.8.0.2"), "client1") is None  # already owned
    assert r.learn("c2", IPv4Network("192.168.77.0/24"), "client2") == LearnAddress(
        "add", "192.168.77.0/24", "client2"
    )
    # the same iroute in another client's ccd moves over
    assert r.learn("c3", IPv4Network("192.168.77.0/24"), "client3") == LearnAddress(
        "update", "192.168.77.0/24", "client3"
    )
    assert r.routes("c2") == []
    assert r.unlearn("c2", IPv4Network("192.168.77.0/24")) is None
    assert r.unlearn("c3", IPv4Network("192.168.77.0/24")) == LearnAddress(
        "delete", "192.168.77.0/24"
    )
    assert r.forget_client("c1") == [
        LearnAddress("delete", "10.8.0.2"),
        LearnAddress("delete", "fd00:8::1000"),
    ]
    assert r.forget_client("c1") == []
    assert r.clients == []
    assert r.route_from_tun(ip4("10.8.0.1", "10.8.0.2")) is None


def test_longest_prefix_match_with_iroutes() -> None:
    r = populated()
    assert r.route_from_tun(ip4("10.8.0.1", "10.8.0.2")) == "c1"
    assert r.route_from_tun(ip4("10.8.0.1", "192.168.77.9")) == "c2"  # /24 beats /16
    assert r.route_from_tun(ip4("10.8.0.1", "192.168.78.9")) == "c3"
    assert r.route_from_tun(ip6("fd00:8::1", "fd00:8::1000")) == "c1"
    assert r.route_from_tun(ip6("fd00:8::1", "fd00:77:0:5::1")) == "c3"
    assert r.route_from_tun(ip4("10.8.0.1", "10.8.0.99")) is None
    assert r.counters.no_route == 1
    # a host route inside an iroute network wins over the network
    r.learn("c1", IPv4Address("192.168.77.5"), "client1")
    assert r.route_from_tun(ip4("10.8.0.1", "192.168.77.5")) == "c1"
    assert r.unlearn("c2", IPv4Network("192.168.77.0/24")) is not None
    assert r.route_from_tun(ip4("10.8.0.1", "192.168.77.9")) == "c3"
    assert r.route_from_tun(ip4("10.8.0.1", "192.168.77.5")) == "c1"
    assert ("192.168.77.0/24" in {str(n) for n, _ in r.routes()}) is False


def test_tun_multicast_goes_to_every_client() -> None:
    r = populated()
    assert r.route_from_tun(ip4("10.8.0.1", "224.0.0.251")) is None
    assert sorted(r.tun_targets(ip4("10.8.0.1", "224.0.0.251"))) == ["c1", "c2", "c3"]
    assert sorted(r.tun_targets(ip6("fd00:8::1", "ff02::1"))) == ["c1", "c2", "c3"]
    assert r.tun_targets(ip4("10.8.0.1", "10.8.0.3")) == ["c2"]
    assert r.tun_targets(b"\x00") == []


def test_source_check() -> None:
    r = populated()
    assert r.check_source("c1", ip4("10.8.0.2", "8.8.8.8"))
    assert r.check_source("c2", ip4("192.168.77.20", "8.8.8.8"))  # from its iroute
    assert not r.check_source("c1", ip4("10.8.0.3", "8.8.8.8"))  # c2's address
    assert not r.check_source("c1", ip4("172.16.0.1", "8.8.8.8"))  # nobody's
    assert r.counters.bad_source == 2
    assert r.check_source("c1", ip6("fe80::1234", "ff02::2"))  # link-local tolerated
    assert not r.check_source("c1", ip6("fd00:8::1001", "fd00:8::1"))
    assert not r.check_source("c1", b"\x45garbage")
    assert r.counters.malformed == 1


def test_route_from_client_without_client_to_client() -> None:
    r = populated()
    assert r.route_from_client("c1", ip4("10.8.0.2", "10.8.0.3"), False) == ToTun()
    assert r.route_from_client("c1", ip4("10.8.0.9", "10.8.0.3"), False) == Drop(
        DropReason.BAD_SOURCE
    )
    assert r.route_from_client("c1", b"\x60" + bytes(10), False) == Drop(DropReason.MALFORMED)
    assert r.counters.bad_source == 1 and r.counters.malformed == 1


def test_route_from_client_with_client_to_client() -> None:
    r = populated()
    assert r.route_from_client("c1", ip4("10.8.0.2", "10.8.0.3"), True) == ToClient("c2")
    assert r.route_from_client("c1", ip4("10.8.0.2", "192.168.5.5"), True) == ToClient("c3")
    assert r.route_from_client("c1", ip4("10.8.0.2", "8.8.8.8"), True) == ToTun()
    assert r.route_from_client("c3", ip6("fd00:77::1", "fd00:8::1000"), True) == ToClient("c1")
    mc = r.route_from_client("c1", ip4("10.8.0.2", "224.0.0.251"), True)
    assert isinstance(mc, ToTun) and sorted(mc.also_to) == ["c2", "c3"]
    assert r.route_from_client("c2", ip4("10.8.0.2", "10.8.0.4"), True) == Drop(
        DropReason.BAD_SOURCE
    )


def test_max_routes_per_client() -> None:
    r: Router[str] = Router(max_routes_per_client=3)
    for i in range(3):
        r.learn("c", IPv4Network(f"10.{i}.0.0/16"), "cn")
    with pytest.raises(RouteLimitExceeded, match="more than 3 routes"):
        r.learn("c", IPv4Address("10.8.0.2"), "cn")
    assert r.counters.route_limit == 1
    assert len(r.routes("c")) == 3
    assert r.learn("c", IPv4Network("10.0.0.0/16"), "cn") is None  # owned already: no limit hit
    assert r.learn("d", IPv4Network("10.0.0.0/16"), "dn") == LearnAddress(
        "update", "10.0.0.0/16", "dn"
    )
    assert r.learn("c", IPv4Address("10.8.0.2"), "cn") is not None  # room again
    with pytest.raises(ValueError):
        Router(max_routes_per_client=0)


def test_default_limit_is_openvpns() -> None:
    r: Router[int] = Router()
    for i in range(256):
        r.learn(1, IPv4Address(167772160 + i))
    with pytest.raises(RouteLimitExceeded):
        r.learn(1, IPv4Address("11.0.0.1"))
    assert r.route_from_tun(ip4("1.1.1.1", "10.0.0.255")) == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.booleans())
def test_random_bytes_never_raise(data: bytes, c2c: bool) -> None:
    r = populated()
    r.route_from_tun(data)
    r.tun_targets(data)
    r.check_source("c1", data)
    result = r.route_from_client("c1", data, c2c)
    assert isinstance(result, ToTun | ToClient | Drop)
    if packet_addresses(data) is None:
        assert result == Drop(DropReason.MALFORMED)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.integers(0, 0xFFFFFFFF),
            st.integers(8, 32),
            st.booleans(),
        ),
        max_size=40,
    ),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=20),
)
def test_lookup_matches_a_naive_longest_prefix_search(
    ops: list[tuple[str, int, int, bool]], probes: list[int]
) -> None:
    r: Router[str] = Router()
    for client, addr, plen, remove in ops:
        net = IPv4Network((addr, plen), strict=False)
        if remove:
            r.unlearn(client, net)
        else:
            r.learn(client, net)
    table = r.routes()
    for probe in probes:
        dst = IPv4Address(probe)
        matches = [(n.prefixlen, c) for n, c in table if dst in n]
        expected = max(matches)[1] if matches else None
        assert r.route_from_tun(ip4("1.1.1.1", str(dst))) == expected
