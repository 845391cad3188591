"""net_plan: pushed and profile routing/DNS options merged the way OpenVPN 2.6 does (issue 13)."""

from __future__ import annotations

import pytest
from helpers.profiles import make_profile

from trivpn.errors import FatalError
from trivpn.profile.push import parse_push_options
from trivpn.session.netsettings import BLOCK_IPV6_SOURCE, REDIRECT_NETS6, DnsSettings, net_plan

SUBNET = ["topology subnet", "ifconfig 10.8.0.2 255.255.255.0", "route-gateway 10.8.0.1"]
V6 = ["ifconfig-ipv6 fd00:8::1000/64 fd00:8::1"]
SERVER = "198.51.100.7"


def plan(pushed: list[str], extra: str = "", server: str = SERVER):  # type: ignore[no-untyped-def]
    return net_plan(parse_push_options(pushed), server, make_profile(extra))


def test_routes_go_via_the_vpn_gateway_with_route_metric() -> None:
    p = plan(
        [*SUBNET, *V6, "route 10.9.0.0 255.255.0.0", "route 10.10.0.0 255.255.0.0 10.8.0.7 3",
         "route-ipv6 fd00:9::/64", "route-metric 20"],
        "route 172.16.0.0 255.255.0.0\nroute-ipv6 2001:db8::/32 default 5\n",
    )
    cfg = p.tun
    assert cfg.ipv4 == ("10.8.0.2", 24, None) and cfg.ipv6 == ("fd00:8::1000", 64)
    assert cfg.routes == [
        ("172.16.0.0/16", "10.8.0.1", 20),  # the profile's first, as OpenVPN
        ("10.9.0.0/16", "10.8.0.1", 20),
        ("10.10.0.0/16", "10.8.0.7", 3),
    ]
    assert cfg.routes6 == [("2001:db8::/32", None, 5), ("fd00:9::/64", None, 20)]
    assert not cfg.redirect_gateway and not cfg.redirect_gateway6
    assert cfg.server_addresses == [] and cfg.bypass == []
    assert p.dns is None and p.block_ipv6_source is None


def test_net30_gateway_is_the_peer() -> None:
    cfg = plan(["topology net30", "ifconfig 10.8.0.6 10.8.0.5", "route 10.9.0.0 255.255.0.0"]).tun
    assert cfg.ipv4 == ("10.8.0.6", 32, "10.8.0.5")
    assert cfg.routes == [("10.9.0.0/16", "10.8.0.5", None)]


@pytest.mark.parametrize(
    ("flags", "v4", "v6", "pinned"),
    [
        ("def1", True, False, [SERVER]),
        ("def1 ipv6", True, True, [SERVER]),
        ("def1 ipv6 !ipv4", False, True, []),  # an IPv4 server is not redirected: no pin
        ("def1 local", True, False, []),
        ("def1 bypass-dhcp bypass-dns autolocal", True, False, [SERVER]),
        ("", True, False, [SERVER]),  # without def1: applied as def1
    ],
)
def test_redirect_gateway_flags_from_the_profile(flags: str, v4: bool, v6: bool, pinned: list[str]) -> None:
    cfg = plan([*SUBNET, *V6], f"redirect-gateway {flags}\n").tun
    assert cfg.redirect_gateway is v4 and cfg.redirect_gateway6 is v6
    assert cfg.redirect_via == ("10.8.0.1" if v4 else None)
    assert cfg.redirect_nets6 == REDIRECT_NETS6
    assert cfg.server_addresses == pinned


def test_pushed_redirect_gateway_adds_to_the_profiles() -> None:
    """OpenVPN ORs the pushed flags into the profile's: its `local` stays (no server pin)."""
    cfg = plan([*SUBNET, "redirect-gateway def1 ipv6"], "redirect-gateway def1 local\n").tun
    assert cfg.redirect_gateway and cfg.redirect_gateway6 and cfg.server_addresses == []


@pytest.mark.parametrize(
    ("pushed", "profile", "v4", "v6"),
    [
        # the profile's `ipv6` survives a pushed def1: replacing it leaked IPv6
        (["redirect-gateway def1 bypass-dhcp"], "redirect-gateway def1 ipv6\n", True, True),
        # two pushed lines (or two profile lines) add up, whatever their order
        (["redirect-gateway ipv6", "redirect-gateway def1"], "", True, True),
        ([], "redirect-gateway ipv6\nredirect-gateway def1\n", True, True),
        # !ipv4 holds only while the last line says it
        (["redirect-gateway ipv6 !ipv4", "redirect-gateway def1"], "", True, True),
        (["redirect-gateway def1"], "redirect-gateway ipv6 !ipv4\n", True, True),
        (["redirect-gateway ipv6 !ipv4"], "redirect-gateway def1\n", False, True),
    ],
)
def test_redirect_gateway_lines_add_up(pushed: list[str], profile: str, v4: bool, v6: bool) -> None:
    cfg = plan([*SUBNET, *V6, *pushed], profile).tun
    assert (cfg.redirect_gateway, cfg.redirect_gateway6) == (v4, v6)


def test_ipv6_server_pinned_when_ipv6_is_redirected() -> None:
    cfg = plan([*SUBNET, *V6, "redirect-gateway def1 ipv6"], server="2001:db8:5::7").tun
    assert cfg.server_addresses == ["2001:db8:5::7"]


def test_a_pushed_default_route_keeps_the_server_reachable() -> None:
    cfg = plan([*SUBNET, "route 0.0.0.0 0.0.0.0"]).tun
    assert cfg.routes == [("0.0.0.0/0", "10.8.0.1", None)]
    assert not cfg.redirect_gateway and cfg.bypass == [SERVER]
    cfg = plan([*SUBNET, *V6, "route-ipv6 ::/0"], server="2001:db8:5::7").tun
    assert cfg.bypass == ["2001:db8:5::7"]
    assert plan([*SUBNET, "route 10.0.0.0 255.0.0.0"]).tun.bypass == []


def test_route_keywords() -> None:
    cfg = plan(
        [*SUBNET, "route remote_host 255.255.255.255 net_gateway", "route 192.0.2.0 255.255.255.0 net_gateway",
         "route vpn_gateway", "route 10.7.0.0 255.255.0.0 vpn_gateway"]
    ).tun
    assert cfg.bypass == [f"{SERVER}/32", "192.0.2.0/24"]
    assert cfg.routes == [("10.8.0.1/32", "10.8.0.1", None), ("10.7.0.0/16", "10.8.0.1", None)]


def test_block_ipv6_routes_ipv6_into_the_tunnel_and_answers_it() -> None:
    p = plan([*SUBNET, "block-ipv6"])
    assert p.tun.redirect_gateway6 and p.tun.redirect_nets6 == REDIRECT_NETS6
    assert p.block_ipv6_source == BLOCK_IPV6_SOURCE
    p = plan([*SUBNET, *V6], "block-ipv6\nredirect-gateway def1 ipv6\n")
    assert p.block_ipv6_source == "fd00:8::1"  # the IPv6 peer, as OpenVPN


def test_static_ifconfig_from_the_profile_when_nothing_is_pushed() -> None:
    p = plan(["ping 10"], "topology subnet\nifconfig 10.66.0.2 255.255.255.0\nroute-gateway 10.66.0.1\n"
             "ifconfig-ipv6 fd00:66::2/64 fd00:66::1\nroute 10.67.0.0 255.255.0.0\n")
    assert p.tun.ipv4 == ("10.66.0.2", 24, None) and p.tun.ipv6 == ("fd00:66::2", 64)
    assert p.tun.routes == [("10.67.0.0/16", "10.66.0.1", None)]
    # a pushed ifconfig wins
    assert plan(SUBNET, "ifconfig 10.66.0.2 255.255.255.0\n").tun.ipv4 == ("10.8.0.2", 24, None)


def test_dns_merges_profile_and_push_and_knows_the_default_route() -> None:
    pushed = [*SUBNET, "dhcp-option DNS 10.8.0.53", "dhcp-option DOMAIN corp.example"]
    p = plan(pushed, "dhcp-option DNS 10.8.0.54\n")
    assert p.dns == DnsSettings(("10.8.0.54", "10.8.0.53"), ("corp.example",), default_route=False)
    assert plan([*pushed, "redirect-gateway def1"]).dns == DnsSettings(
        ("10.8.0.53",), ("corp.example",), default_route=True
    )
    assert plan([*SUBNET, "dhcp-option DNS 10.8.0.53"]).dns == DnsSettings(("10.8.0.53",), (), True)
    no_dns = make_profile()
    no_dns.no_dns = True
    assert net_plan(parse_push_options(pushed), SERVER, no_dns).dns is None
    assert plan([*SUBNET, "dhcp-option DOMAIN corp.example"]).dns is None  # no server: nothing to do


def test_pushed_resolve_domains_are_routing_domains_without_redirect_gateway() -> None:
    pushed = [*SUBNET, "dns server 1 address 10.8.0.53", "dns server 1 resolve-domains corp.example"]
    assert plan(pushed).dns == DnsSettings(("10.8.0.53",), (), False, ("corp.example",))
    # with redirect-gateway every name still goes through the tunnel
    assert plan([*pushed, "redirect-gateway def1"]).dns == DnsSettings(("10.8.0.53",), (), True, ("corp.example",))
    # a DNS server of the profile's own takes every name: no split
    assert plan(pushed, "dhcp-option DNS 10.8.0.54\n").dns == DnsSettings(("10.8.0.54", "10.8.0.53"), (), True)


@pytest.mark.parametrize(
    ("pushed", "profile", "kernel", "message"),
    [
        # a net30 push met by the profile's topology subnet: was a ValueError traceback
        (["ifconfig 10.8.0.6 10.8.0.5"], "topology subnet\n", False, "10.8.0.5 is not a netmask"),
        # what the kernel refuses: was a ConfigError at apply time, which ended the run
        ([*SUBNET, *V6, "tun-mtu 1200"], "", True, "too small for IPv6"),
        (["topology subnet", "ifconfig 10.8.0.2 0.0.0.0"], "", True, "bad IPv4 prefix length 0"),
        (["ifconfig-ipv6 fd00:8::2/0 fd00:8::1"], "", True, "bad prefix length 0"),
    ],
)
def test_unusable_settings_are_a_fatal_error_the_client_restarts_on(
    pushed: list[str], profile: str, kernel: bool, message: str
) -> None:
    with pytest.raises(FatalError, match=message):
        net_plan(parse_push_options(pushed), SERVER, make_profile(profile), kernel=kernel)
    net_plan(parse_push_options(pushed[:-1]), SERVER, make_profile(profile), kernel=kernel)  # fine without


def test_route_metric_applies_to_the_ipv6_redirect_routes_as_in_openvpn() -> None:
    """OpenVPN adds ::/3, 2000::/4, 3000::/4 and fc00::/7 as route-ipv6 lines: route-metric
    applies to them (not to the IPv4 def1 halves)."""
    from trivpn.tun.tunplan import make_plan

    cfg = plan([*SUBNET, *V6, "redirect-gateway def1 ipv6", "route-metric 20"]).tun
    assert cfg.redirect_metric6 == 20
    metrics = {f"{r.dst}/{r.prefixlen}": r.metric for r in make_plan(cfg).routes}
    assert metrics == {"0.0.0.0/1": None, "128.0.0.0/1": None, **{n: 20 for n in REDIRECT_NETS6}}
    assert plan([*SUBNET, *V6, "redirect-gateway def1 ipv6"]).tun.redirect_metric6 is None


def test_profile_route_names_use_their_addresses_and_an_unresolved_one_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OpenVPN resolves a profile route's host name when it adds the route and skips the
    route ("failed to parse/resolve route") if the name does not resolve."""
    extra = (
        "route intranet.example 255.255.255.255\n"
        "route 10.3.0.0 255.255.0.0 gw.example\n"
        "route gone.example 255.255.255.255\n"
        "route 10.4.0.0 255.255.0.0\n"
    )
    names = {"intranet.example": "10.77.0.5", "gw.example": "10.8.0.9", "gone.example": None}
    p = net_plan(parse_push_options(SUBNET), SERVER, make_profile(extra), names=names)
    assert p.tun.routes == [
        ("10.77.0.5/32", "10.8.0.1", None),
        ("10.3.0.0/16", "10.8.0.9", None),
        ("10.4.0.0/16", "10.8.0.1", None),
    ]
    assert any("gone.example did not resolve" in r.getMessage() for r in caplog.records)
    # without answers (e.g. tun_config_from) every named route is skipped, the rest stays
    assert plan(SUBNET, extra).tun.routes == [("10.4.0.0/16", "10.8.0.1", None)]
