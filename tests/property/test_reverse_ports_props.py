"""Property tests for the relay's port allocator: quotas hold and ports in use stay put,
whatever the order of binds, leaves and expiries."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trivpn.reverse.ports import PortAllocator, PortUnavailable

ops = st.lists(
    st.tuples(
        st.sampled_from(["assign", "release", "release-idle"]),
        st.integers(0, 2),  # token name
        st.integers(0, 5),  # client id
        st.integers(0, 1),  # slot
        st.sampled_from([0, 0, 0, 100, 103]),  # requested port
        st.floats(0.0, 20.0),  # time step
    ),
    max_size=80,
)


@given(ops, st.integers(1, 4))
def test_quota_and_ownership_hold(
    steps: list[tuple[str, int, int, int, int, float]], quota: int
) -> None:
    pa = PortAllocator(100, 109, lease=30, idle_lease=5, default_quota=quota, quotas={"n0": 1})
    using: dict[int, tuple[tuple[str, bytes], int]] = {}  # port -> (owner, slot), in use
    now = 0.0
    for op, n, cid, slot, requested, dt in steps:
        now += dt
        owner = (f"n{n}", bytes([cid]) * 16)
        if op == "assign":
            try:
                port, _ = pa.assign(owner, requested, now, slot=slot)
            except PortUnavailable:
                continue
            # a port in use by someone else is never handed out
            assert port not in using or using[port] == (owner, slot)
            using = {p: o for p, o in using.items() if o != (owner, slot)}
            using[port] = (owner, slot)
        else:
            mine = [p for p, o in using.items() if o[0] == owner]
            if mine:
                pa.release(mine[0], owner, now, used=op == "release")
                del using[mine[0]]
        for name in ("n0", "n1", "n2"):
            assert len(pa.held(name, now)) <= pa.quota(name)
        for port, (o, s) in using.items():
            assert pa.in_use(port) and pa.port_of(o, s) == port
