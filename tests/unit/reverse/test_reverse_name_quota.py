"""Named binds count against a per-token quota, and a bind does not scan every name.

The hunt: with one valid token, 3000 sessions with random subdomains (a fresh client id
each) all bound within 6 s and the relay's RSS went 29 -> 90 MB; only ports counted
toward --port-quota, and `NameLeases.assign` walked every name on every bind.
"""

from __future__ import annotations

import pytest

from trivpn.reverse.http.names import NameLeases, NameUnavailable


class CountingDict(dict[str, object]):
    """Counts the walks over the name table (what made each bind cost O(all names))."""

    walks = 0

    def items(self):  # type: ignore[no-untyped-def,override]
        CountingDict.walks += 1
        return super().items()

    def __iter__(self):  # type: ignore[no-untyped-def,override]
        CountingDict.walks += 1
        return super().__iter__()


def test_one_token_holds_at_most_its_quota_of_names_whatever_its_client_ids() -> None:
    names = NameLeases()
    bound = refused = 0
    for i in range(3000):  # the hunt's figure: 3000 sessions, one token, random names
        try:
            names.assign(("default", i.to_bytes(16, "big")), f"n{i:x}", float(i) / 1000)
            bound += 1
        except NameUnavailable as exc:
            assert "quota of 4 name(s)" in str(exc)
            refused += 1
    assert (bound, refused) == (4, 2996)  # before: 3000 bound, 0 refused
    assert len(names) == 4 and names.held("default", 3.0) == 4


def test_a_new_name_gives_up_the_tokens_oldest_lease_first() -> None:
    names = NameLeases(lease=60, quota=2)
    a, b, c = (("t", bytes([i]) * 16) for i in range(3))
    names.assign(a, "a", 0)
    names.assign(b, "b", 0)
    names.release("a", a, 1)  # a's session ended: leased till 61
    names.release("b", b, 2)
    assert names.assign(c, "c", 3) is False  # over the quota: a's (oldest) lease goes
    assert not names.leased("a", 3) and names.leased("b", 3) and names.leased("c", 3)
    assert names.held("t", 3) == 2
    names.assign(b, "b", 4)  # b is back, in use again: both names in use
    with pytest.raises(NameUnavailable, match="quota of 2"):
        names.assign(a, "a", 5)
    assert names.held("other", 5) == 0 and names.assign(("other", a[1]), "a", 5) is False


def test_quota_is_per_token_name_and_a_client_still_holds_one_name() -> None:
    names = NameLeases(quota=1)
    me = ("me", b"\x01" * 16)
    names.assign(me, "one", 0)
    names.assign(me, "two", 0)  # replacing its own name is not over the quota
    assert not names.leased("one", 0) and names.leased("two", 0) and len(names) == 1
    names.assign(("you", b"\x01" * 16), "three", 0)  # another token: its own quota
    assert len(names) == 2


def test_binds_and_lookups_do_not_walk_every_name() -> None:
    """20,000 names (distinct tokens) held: 1,000 more binds, releases and lookups walk the
    table 0 times (before: 2 walks of all names per bind, 1 per lookup)."""
    names = NameLeases(lease=60)
    for i in range(20_000):
        names.assign((f"t{i}", b"\x00" * 16), f"a{i}", 0.0)
    names._names = CountingDict(names._names)  # type: ignore[assignment]
    CountingDict.walks = 0
    for i in range(1_000):
        owner = (f"u{i}", b"\x00" * 16)
        names.assign(owner, f"b{i}", 1.0)
        names.release(f"b{i}", owner, 1.0)
        assert names.leased(f"b{i}", 2.0)
    assert CountingDict.walks == 0
    assert not names.leased("b0", 61.0) and len(names) == 20_000  # leases still expire


def test_stale_expiries_do_not_pile_up() -> None:
    names = NameLeases(lease=60)
    me = ("me", b"\x02" * 16)
    for i in range(10_000):  # a client that reconnects again and again within its lease
        names.assign(me, "api", float(i))
        names.release("api", me, float(i))
    assert len(names._expiries) <= 2 * len(names) + 64 + 1
    assert names.leased("api", 10_000.0) and not names.leased("api", 10_060.0)
    assert names.held("me", 10_060.0) == 0
