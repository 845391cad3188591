"""Property tests for issue 13: pull-filter decisions, block-ipv6 answers, resolv.conf text."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from trivpn.profile.netopts import NOPULL_OPTIONS, PullPolicy, PushRejected
from trivpn.session.dns import MAX_NAMESERVERS, resolv_conf_text
from trivpn.session.netsettings import DnsSettings
from trivpn.tun.ip import ICMP6_ERROR_MAX, _pseudo_header_sum, icmp6_no_route, internet_checksum

names = st.sampled_from(["route", "route-ipv6", "dhcp-option", "dns", "ping", "ifconfig", "redirect-gateway"])
options = st.builds(lambda n, rest: f"{n} {rest}".strip(), names, st.text("abc019. ", max_size=12))
rules = st.lists(
    st.tuples(st.sampled_from(["accept", "ignore", "reject"]), st.text("routedhcpins- 019", min_size=1, max_size=8)),
    max_size=4,
)


@given(st.lists(options, max_size=12, unique=True), rules, st.booleans())
def test_pull_policy_partitions_in_order_or_rejects(opts: list[str], filters: list[tuple[str, str]], nopull: bool) -> None:
    policy = PullPolicy(tuple(filters), nopull)
    first = [next((a for a, p in filters if o.startswith(p)), "accept") for o in opts]
    try:
        kept, dropped = policy.apply(opts)
    except PushRejected:
        assert "reject" in first
        return
    assert "reject" not in first
    expected_dropped = [
        o for o, action in zip(opts, first, strict=True)
        if action == "ignore" or (nopull and o.split()[0] in NOPULL_OPTIONS)
    ]
    assert dropped == expected_dropped
    assert kept == [o for o in opts if o not in expected_dropped]  # the rest, in order


@given(st.binary(min_size=40, max_size=2000), st.sampled_from(["fe80::7", "fd00::1"]))
def test_icmp6_answer_is_valid_or_absent(tail: bytes, source: str) -> None:
    packet = bytes([0x60]) + tail[1:]
    answer = icmp6_no_route(packet, source)
    if answer is None:
        return
    assert len(answer) <= ICMP6_ERROR_MAX
    length = struct.unpack("!H", answer[4:6])[0]
    assert length == len(answer) - 40
    assert answer[24:40] == packet[8:24]
    assert internet_checksum(answer[40:], _pseudo_header_sum(answer[8:24], answer[24:40], length, 58)) == 0


@given(
    st.binary(max_size=400),
    st.lists(st.sampled_from(["10.8.0.53", "fd00::53", "10.8.0.54", "192.0.2.1"]), min_size=1, max_size=5),
    st.booleans(),
)
def test_resolv_conf_text_bounds(original: bytes, servers: list[str], default_route: bool) -> None:
    text = resolv_conf_text(original, DnsSettings(tuple(servers), ("corp.example",), default_route), "tun0").decode()
    ns = [ln.split()[1] for ln in text.splitlines() if ln.startswith("nameserver ")]
    assert 1 <= len(ns) <= MAX_NAMESERVERS
    assert ns[0] == servers[0]
    if default_route:
        assert set(ns) <= set(servers)  # nothing outside the tunnel
