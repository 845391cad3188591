"""The address pool against OpenVPN 2.6's observed behaviour ([V] values of the reference)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.errors import ConfigError
from trivpn.server.pool import (
    AddressPool,
    FixedAddressError,
    IfconfigIPv6Push,
    IfconfigPush,
    IPv4Pool,
    IPv6Pool,
    Lease,
    PersistEntry,
    PoolExhausted,
    PoolType,
    pool_for_server,
)

NET8 = IPv4Network("10.8.0.0/24")
NET9 = IPv4Network("10.9.0.0/24")
NET6 = IPv6Network("fd00:8::/64")


def options(lease: Lease) -> list[str]:
    return [p.option for p in lease.pushes()]


def subnet_pool(v6: bool = True) -> AddressPool:
    return pool_for_server(NET8, "subnet", NET6 if v6 else None)


# ---- layouts and the [V] values --------------------------------------------------------


def test_subnet_first_clients() -> None:
    pool = subnet_pool()
    assert pool.size == 253  # 10.8.0.2 .. 10.8.0.254
    a = pool.acquire("client1")
    assert options(a) == [
        "ifconfig-ipv6 fd00:8::1000/64 fd00:8::1",
        "ifconfig 10.8.0.2 255.255.255.0",
    ]
    b = pool.acquire("client2")
    assert b.ipv4 == IfconfigPush(IPv4Address("10.8.0.3"), IPv4Address("255.255.255.0"))
    assert b.ipv6 == IfconfigIPv6Push(IPv6Address("fd00:8::1001"), 64, IPv6Address("fd00:8::1"))


def test_net30_first_clients() -> None:
    pool = pool_for_server(NET9, "net30")
    assert pool.size == 62  # 10.9.0.4/30 .. 10.9.0.248/30
    assert options(pool.acquire("c1")) == ["ifconfig 10.9.0.6 10.9.0.5"]
    assert options(pool.acquire("c2")) == ["ifconfig 10.9.0.10 10.9.0.9"]
    assert pool.ipv4_base(1) == IPv4Address("10.9.0.8")


def test_script_environment() -> None:
    assert subnet_pool().acquire("c").env() == {
        "ifconfig_pool_remote_ip": "10.8.0.2",
        "ifconfig_pool_netmask": "255.255.255.0",
        "ifconfig_pool_remote_ip6": "fd00:8::1000",
        "ifconfig_pool_local_ip6": "fd00:8::1",
        "ifconfig_pool_ip6_netbits": "64",
    }
    assert pool_for_server(NET9, "net30").acquire("c").env() == {
        "ifconfig_pool_remote_ip": "10.9.0.6",
        "ifconfig_pool_local_ip": "10.9.0.5",
    }


def test_net30_slash29_is_a_single_slot_and_refused() -> None:
    # net30 on a /29: pool N+4 .. broadcast is one /30, below OpenVPN's minimum of two
    with pytest.raises(ConfigError, match="too small"):
        pool_for_server(IPv4Network("10.9.0.0/29"), "net30")
    assert pool_for_server(IPv4Network("10.9.0.0/28"), "net30").size == 2


def test_ipv6_long_prefix_starts_at_p_plus_2() -> None:
    pool = pool_for_server(None, "subnet", IPv6Network("fd00:9::/112"))
    lease = pool.acquire("c")
    assert options(lease) == ["ifconfig-ipv6 fd00:9::2/112 fd00:9::1"]
    assert pool.size == 65536 - 2


def test_ipv6_pool_smaller_than_ipv4_limits_size() -> None:
    pool = pool_for_server(IPv4Network("10.0.0.0/16"), "subnet", IPv6Network("fd00::/120"))
    assert pool.size == 256 - 2


def test_ipv6_base_with_zero_host_part_skips_anycast() -> None:
    pool = AddressPool(None, IPv6Pool(IPv6Address("fd00::"), 120, IPv6Address("fd00::ff")))
    assert pool.acquire("a").ipv6 == IfconfigIPv6Push(
        IPv6Address("fd00::1"), 120, IPv6Address("fd00::ff")
    )


@pytest.mark.parametrize(
    ("net", "topology"),
    [(IPv4Network("10.0.0.0/31"), "subnet"), (IPv4Network("10.0.0.0/30"), "net30"), (NET8, "p2p")],
)
def test_bad_server_networks(net: IPv4Network, topology: str) -> None:
    with pytest.raises(ConfigError):
        pool_for_server(net, topology)


def test_pool_needs_some_range() -> None:
    with pytest.raises(ConfigError, match="/64../124"):
        pool_for_server(None, "subnet", IPv6Network("fd00::/125"))
    with pytest.raises(ConfigError, match="/64../124"):
        pool_for_server(None, "subnet", IPv6Network("fd00::/48"))
    with pytest.raises(ConfigError):
        AddressPool(None, None)
    with pytest.raises(ConfigError):
        AddressPool(
            IPv4Pool(
                PoolType.INDIV,
                IPv4Address("10.0.0.9"),
                IPv4Address("10.0.0.2"),
                IPv4Address("255.0.0.0"),
            )
        )
    with pytest.raises(ConfigError):  # too large
        AddressPool(
            IPv4Pool(
                PoolType.INDIV,
                IPv4Address("10.0.0.0"),
                IPv4Address("10.2.0.0"),
                IPv4Address("255.0.0.0"),
            )
        )
    with pytest.raises(ConfigError):  # subnet without netmask
        AddressPool(IPv4Pool(PoolType.INDIV, IPv4Address("10.0.0.2"), IPv4Address("10.0.0.9")))


# ---- choosing an address ---------------------------------------------------------------


def test_cn_gets_its_address_back_after_disconnect() -> None:
    pool = subnet_pool()
    a = pool.acquire("client1")
    b = pool.acquire("client2")
    assert pool.release(a, now=10.0)
    c = pool.acquire("client3")
    # client1's entry (released at 10) is newer than the never-used ones (released at 0)
    assert c.ipv4 is not None and c.ipv4.address == IPv4Address("10.8.0.4")
    again = pool.acquire("client1")
    assert again.ipv4 == a.ipv4 and again.ipv6 == a.ipv6
    assert b.ipv4 != again.ipv4


def test_cn_remembered_on_two_entries_takes_the_lowest() -> None:
    pool = subnet_pool()
    a = pool.acquire("twice")
    b = pool.acquire("twice")  # without duplicate-cn the service drops `a` first; here both live
    pool.release(b, now=1.0)
    pool.release(a, now=2.0)
    assert pool.acquire("twice").handle == 0
    assert pool.acquire("twice").handle == 1


def test_oldest_release_wins_for_a_new_cn() -> None:
    pool = AddressPool(
        IPv4Pool(
            PoolType.INDIV,
            IPv4Address("10.0.0.2"),
            IPv4Address("10.0.0.4"),
            IPv4Address("255.255.255.0"),
        )
    )
    leases = [pool.acquire(f"c{i}") for i in range(3)]
    pool.release(leases[2], now=5.0)
    pool.release(leases[0], now=7.0)
    pool.release(leases[1], now=6.0)
    fresh = pool.acquire("new")
    assert fresh.handle == 2  # released at 5, the oldest
    assert pool.acquire("new2").handle == 1


def test_duplicate_cn_takes_first_free_and_records_no_cn() -> None:
    pool = subnet_pool()
    a = pool.acquire("same", duplicate_cn=True)
    b = pool.acquire("same", duplicate_cn=True)
    assert (a.handle, b.handle) == (0, 1)
    pool.release(a, now=1.0)
    assert pool.persist_entries() == []  # with duplicate-cn the file stays empty
    assert pool.acquire("other", duplicate_cn=True).handle == 0


def test_hard_release_forgets_the_cn() -> None:
    pool = subnet_pool()
    a = pool.acquire("c1")
    pool.acquire("c2")
    pool.release(a, now=3.0, hard=True)
    assert pool.acquire("c3").handle == 2  # never released (0) is older than 3
    assert pool.acquire("c1").handle == 3  # no stickiness left: handle 0 is not preferred


def test_exhaustion_is_a_clear_error() -> None:
    pool = pool_for_server(IPv4Network("10.1.0.0/29"), "subnet")
    leases = [pool.acquire(f"c{i}") for i in range(pool.size)]
    with pytest.raises(PoolExhausted, match="exhausted"):
        pool.acquire("late")
    pool.release(leases[3], now=1.0)
    assert pool.acquire("late").handle == 3


def test_stale_release_is_a_noop() -> None:
    pool = subnet_pool()
    a = pool.acquire("c1")
    assert pool.release(a, now=1.0)
    b = pool.acquire("c1")
    assert b.handle == a.handle
    assert not pool.release(a, now=2.0)  # the old copy cannot free c1's new lease
    assert pool.is_live(b) and pool.in_use == 1


# ---- ccd fixed addresses ---------------------------------------------------------------


def test_fixed_inside_pool_takes_its_slot_ipv6_without_double_allocation() -> None:
    pool = subnet_pool()
    first = pool.acquire("client2")
    fixed = pool.reserve_fixed(
        "client2",
        ipv4=IfconfigPush(IPv4Address("10.8.0.250"), IPv4Address("255.255.255.0")),
        replaces=first,
        now=1.0,
    )
    # 10.8.0.250 lies in the pool (handle 248): its slot's IPv6 address goes with it
    assert fixed.handle == 248 and fixed.ipv6 is not None
    assert fixed.ipv6.address == IPv6Address("fd00:8::1000") + 248
    assert not pool.is_live(first)
    others = [pool.acquire(f"o{i}") for i in range(pool.size - 1)]
    got_v6 = {o.ipv6.address for o in others if o.ipv6}
    got_v4 = {o.ipv4.address for o in others if o.ipv4}
    assert fixed.ipv6.address not in got_v6  # the OpenVPN 2.6 quirk is not copied
    assert IPv4Address("10.8.0.250") not in got_v4
    with pytest.raises(PoolExhausted):
        pool.acquire("one-too-many")


def test_fixed_ipv4_outside_pool_range_keeps_replaced_handle_for_ipv6() -> None:
    pool = AddressPool(
        IPv4Pool(
            PoolType.INDIV,
            IPv4Address("10.8.0.100"),
            IPv4Address("10.8.0.199"),
            IPv4Address("255.255.255.0"),
            NET8,
            IPv4Address("10.8.0.1"),
        ),
        IPv6Pool(IPv6Address("fd00:8::1000"), 64, IPv6Address("fd00:8::1")),
    )
    first = pool.acquire("c")
    fixed = pool.reserve_fixed(
        "c",
        ipv4=IfconfigPush(IPv4Address("10.8.0.50"), IPv4Address("255.255.255.0")),
        replaces=first,
        now=1.0,
    )
    assert options(fixed) == [
        "ifconfig-ipv6 fd00:8::1000/64 fd00:8::1",
        "ifconfig 10.8.0.50 255.255.255.0",
    ]
    assert fixed.handle == first.handle
    other = pool.acquire("d")
    assert other.ipv6 is not None and other.ipv6.address == IPv6Address("fd00:8::1001")
    # the fixed client disconnects: hard release, its slot no longer remembers "c"
    assert pool.release(fixed, now=2.0)
    assert all(e.common_name != "c" for e in pool.persist_entries())


def test_fixed_refusals() -> None:
    pool = subnet_pool()
    owner = pool.acquire("a")
    assert owner.ipv4 is not None
    mask = IPv4Address("255.255.255.0")
    with pytest.raises(FixedAddressError, match="in use by another client"):
        pool.reserve_fixed("b", ipv4=IfconfigPush(owner.ipv4.address, mask), now=1.0)
    with pytest.raises(FixedAddressError, match="outside the server network"):
        pool.reserve_fixed("b", ipv4=IfconfigPush(IPv4Address("192.168.1.5"), mask), now=1.0)
    with pytest.raises(FixedAddressError, match="server's own"):
        pool.reserve_fixed("b", ipv4=IfconfigPush(IPv4Address("10.8.0.1"), mask), now=1.0)
    with pytest.raises(FixedAddressError, match="broadcast"):
        pool.reserve_fixed("b", ipv4=IfconfigPush(IPv4Address("10.8.0.255"), mask), now=1.0)
    with pytest.raises(FixedAddressError, match="outside"):
        pool.reserve_fixed("b", ipv6=IfconfigIPv6Push(IPv6Address("fd00:9::5"), 64, None), now=1.0)
    with pytest.raises(FixedAddressError):
        pool.reserve_fixed("b", now=1.0)
    # a second client with the same fixed address outside the pool range is refused too
    small = AddressPool(
        IPv4Pool(PoolType.INDIV, IPv4Address("10.8.0.100"), IPv4Address("10.8.0.110"), mask, NET8)
    )
    small.reserve_fixed("x", ipv4=IfconfigPush(IPv4Address("10.8.0.50"), mask), now=0.0)
    with pytest.raises(FixedAddressError, match="already given"):
        small.reserve_fixed("y", ipv4=IfconfigPush(IPv4Address("10.8.0.50"), mask), now=0.0)
    assert pool.is_live(owner)  # refusals leave existing leases alone


def test_fixed_ipv6_only_keeps_pool_ipv4_and_is_released() -> None:
    pool = subnet_pool()
    first = pool.acquire("c")
    v6 = IfconfigIPv6Push(IPv6Address("fd00:8::77"), 64, IPv6Address("fd00:8::1"))
    fixed = pool.reserve_fixed("c", ipv6=v6, replaces=first, now=1.0)
    assert fixed.ipv4 == first.ipv4 and fixed.ipv6 == v6
    with pytest.raises(FixedAddressError, match="already given"):
        pool.reserve_fixed("d", ipv6=v6, now=1.0)
    pool.release(fixed, now=2.0)
    assert pool.reserve_fixed("d", ipv6=v6, now=3.0).ipv6 == v6
    assert pool.acquire("c").handle == first.handle  # pool IPv4 was soft-released: sticky


def test_net30_fixed_in_range_blocks_its_slot() -> None:
    pool = pool_for_server(NET9, "net30")
    fixed = pool.reserve_fixed(
        "f", ipv4=IfconfigPush(IPv4Address("10.9.0.6"), IPv4Address("10.9.0.5")), now=0.0
    )
    assert fixed.blocked == (0,)
    assert options(pool.acquire("n")) == ["ifconfig 10.9.0.10 10.9.0.9"]
    pool.release(fixed, now=1.0)
    assert options(pool.acquire("m")) == ["ifconfig 10.9.0.6 10.9.0.5"]


# ---- no double allocation, ever -------------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["acq", "acq", "rel", "hard", "fix", "stale"]),
        st.integers(0, 7),
        st.booleans(),
        st.integers(0, 40),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_live_leases_never_share_an_address(seq: list[tuple[str, int, bool, int]]) -> None:
    pool = AddressPool(
        IPv4Pool(
            PoolType.INDIV,
            IPv4Address("10.8.0.10"),
            IPv4Address("10.8.0.17"),
            IPv4Address("255.255.255.0"),
            NET8,
            IPv4Address("10.8.0.1"),
        ),
        IPv6Pool(IPv6Address("fd00:8::1000"), 64, IPv6Address("fd00:8::1")),
    )
    live: list[Lease] = []
    dead: list[Lease] = []
    now = 0.0
    for op, cn, dup, n in seq:
        now += 1.0
        if op == "acq":
            try:
                live.append(pool.acquire(f"cn{cn}", duplicate_cn=dup))
            except PoolExhausted:
                assert pool.in_use == pool.size
        elif op in ("rel", "hard") and live:
            lease = live.pop(n % len(live))
            assert pool.release(lease, now, hard=op == "hard")
            dead.append(lease)
        elif op == "stale" and dead:
            assert not pool.release(dead[n % len(dead)], now)
        elif op == "fix":
            replaces = live.pop(n % len(live)) if live and dup else None
            v4 = IfconfigPush(IPv4Address("10.8.0.2") + n, IPv4Address("255.255.255.0"))
            try:
                live.append(pool.reserve_fixed(f"cn{cn}", ipv4=v4, replaces=replaces, now=now))
                if replaces is not None:
                    dead.append(replaces)
            except FixedAddressError:
                if replaces is not None:
                    assert pool.is_live(replaces)
                    live.append(replaces)
        v4s = [lease.ipv4.address for lease in live if lease.ipv4]
        v6s = [lease.ipv6.address for lease in live if lease.ipv6]
        assert len(v4s) == len(set(v4s)), v4s
        assert len(v6s) == len(set(v6s)), v6s
        assert all(pool.is_live(lease) for lease in live)


class _ModelEntry:
    def __init__(self) -> None:
        self.in_use = False
        self.cn: str | None = None
        self.released = 0.0
        self.fixed = False


def _model_find(entries: list[_ModelEntry], cn: str, dup: bool) -> int | None:
    """OpenVPN's linear scan, written independently of the pool's indexes."""
    oldest: int | None = None
    for i, e in enumerate(entries):
        if e.in_use:
            continue
        if dup:
            if not e.fixed:
                return i
            continue
        if e.cn == cn:
            return i
        if not e.fixed and (oldest is None or e.released < entries[oldest].released):
            oldest = i
    return oldest


choice_ops = st.lists(
    st.tuples(
        st.sampled_from(["acq", "acq", "acq", "rel", "hard", "persist"]),
        st.integers(0, 5),
        st.booleans(),
        st.integers(0, 30),
    ),
    max_size=120,
)


@settings(max_examples=200, deadline=None)
@given(choice_ops)
def test_choice_matches_openvpns_scan(seq: list[tuple[str, int, bool, int]]) -> None:
    pool = AddressPool(
        IPv4Pool(
            PoolType.INDIV,
            IPv4Address("10.0.0.2"),
            IPv4Address("10.0.0.7"),
            IPv4Address("255.0.0.0"),
        )
    )
    model = [_ModelEntry() for _ in range(pool.size)]
    live: list[Lease] = []
    now = 0.0
    for op, cn_i, flag, n in seq:
        now += float(n % 3)  # equal release times happen: ties break on the lowest handle
        cn = f"cn{cn_i}"
        if op == "acq":
            want = _model_find(model, cn, flag)
            if want is None:
                with pytest.raises(PoolExhausted):
                    pool.acquire(cn, duplicate_cn=flag)
                continue
            lease = pool.acquire(cn, duplicate_cn=flag)
            assert lease.handle == want
            model[want].in_use, model[want].cn = True, None if flag else cn
            live.append(lease)
        elif op in ("rel", "hard") and live:
            lease = live.pop(n % len(live))
            assert lease.handle is not None
            pool.release(lease, now, hard=op == "hard")
            m = model[lease.handle]
            m.in_use, m.released = False, now
            if op == "hard":
                m.cn = None
        elif op == "persist":
            h = n % pool.size
            addr = pool.ipv4_base(h)
            if not model[h].in_use:
                assert pool.load_persist([PersistEntry(cn, addr, None)], fixed=flag, now=now) == []
                model[h].cn, model[h].released, model[h].fixed = cn, now, flag
