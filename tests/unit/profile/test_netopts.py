"""Routing and DNS options in a profile, and the user's say over pushed ones (issue 13)."""

from __future__ import annotations

import pytest

from trivpn.errors import ConfigError, RemoteProtocolError
from trivpn.profile.model import Route, Route6
from trivpn.profile.netopts import PullPolicy, PushRejected
from trivpn.profile.profile import parse_profile
from trivpn.profile.push import parse_push_options

CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUCA==\n-----END CERTIFICATE-----\n"
MINIMAL = f"client\ndev tun\nremote vpn.example.com\n<ca>\n{CA}</ca>\n"


def parse(extra: str):  # type: ignore[no-untyped-def]
    return parse_profile(MINIMAL + extra)


def test_profile_routing_options_are_parsed() -> None:
    p = parse(
        "route 10.1.0.0 255.255.0.0\n"
        "route 10.2.0.0 255.255.255.0 10.8.0.9 7\n"
        "route-ipv6 2001:db8::/32\n"
        "route-ipv6 fd00:1::/48 default 3\n"
        "route-gateway 10.8.0.1\n"
        "route-metric 42\n"
        "redirect-gateway def1 ipv6 bypass-dhcp\n"
        "block-ipv6\n"
        "route-nopull\n"
        "topology subnet\n"
        "ifconfig 10.8.0.2 255.255.255.0\n"
        "ifconfig-ipv6 fd00::2/64 fd00::1\n"
    )
    assert p.routes == [
        Route("10.1.0.0", "255.255.0.0", None, None),
        Route("10.2.0.0", "255.255.255.0", "10.8.0.9", 7),
    ]
    assert p.routes_ipv6 == [Route6("2001:db8::/32", None, None), Route6("fd00:1::/48", None, 3)]
    assert p.route_gateway == "10.8.0.1" and p.route_metric == 42
    assert p.redirect_gateway == frozenset({"def1", "ipv6", "bypass-dhcp"})
    assert p.block_ipv6 and p.route_nopull
    assert p.topology == "subnet"
    assert p.ifconfig == ("10.8.0.2", "255.255.255.0")
    assert p.ifconfig_ipv6 == ("fd00::2/64", "fd00::1")
    assert p.warnings == []


def test_an_unknown_redirect_gateway_flag_is_an_error_as_in_openvpn() -> None:
    """A misspelt flag (here `ipv` for `ipv6`) must not quietly leave IPv6 outside the tunnel."""
    with pytest.raises(ConfigError, match=r"line 9: option 'redirect-gateway': unknown flag 'ipv'"):
        parse("redirect-gateway def1 ipv\n")


def test_profile_dns_options_accumulate_without_duplicates() -> None:
    p = parse(
        "dhcp-option DNS 10.8.0.53\n"
        "dhcp-option DNS6 fd00::53\n"
        "dhcp-option DOMAIN corp.example\n"
        "dhcp-option DOMAIN-SEARCH corp.example\n"
        "dns server 1 address 10.8.0.54 [fd00::54]:53\n"
        "dns search-domains lab.example\n"
        "dhcp-option WINS 10.8.0.1\n"
    )
    assert p.dns_servers == ["10.8.0.53", "fd00::53", "10.8.0.54", "fd00::54"]
    assert p.dns_domains == ["corp.example", "lab.example"]
    assert p.warnings == ["option 'dhcp-option WINS' (line 15) is not supported and was ignored"]


def test_profile_routes_may_name_hosts() -> None:
    """As OpenVPN 2.6 reads a profile (checked with the real client): a host name as a
    route's network or gateway is resolved when the routes go in (session/routenames.py)."""
    p = parse("route intranet.example 255.255.255.255\nroute 10.3.0.0 255.255.0.0 gw.example 4\n")
    assert p.routes == [
        Route("intranet.example", "255.255.255.255", None, None),
        Route("10.3.0.0", "255.255.0.0", "gw.example", 4),
    ]
    assert p.warnings == []


def test_route_gateway_dhcp_is_a_warning_on_a_tun() -> None:
    """OpenVPN 2.6 accepts `route-gateway dhcp` and on a TUN sets nothing with it (it waits
    for a DHCP answer only a TAP device sees): its routes used the server's route-gateway."""
    p = parse("route-gateway dhcp\nroute 10.3.0.0 255.255.0.0\n")
    assert p.route_gateway is None and p.routes == [Route("10.3.0.0", "255.255.0.0", None, None)]
    assert p.warnings == [
        "option 'route-gateway dhcp' (line 9) is for TAP devices and sets nothing on a TUN;"
        " routes use the server's route-gateway"
    ]
    assert parse("route-gateway 10.8.0.1\n").route_gateway == "10.8.0.1"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("route 10.1.0.0 255.0.255.0", "netmask"),
        ("route 10.1.0.300", "IPv4 address"),
        ("route 10.1.0.0 255.255.0.0 10.8.0.300", "IPv4 address"),
        ("route bad..name", "IPv4 address"),
        ("route-gateway 10.8.0", "IPv4 address"),
        ("route-gateway 10.8.0.1 extra", "takes exactly 1 argument"),
        ("route-ipv6 nonsense", "IPv6 network"),
        ("route-metric -1", "route-metric"),
        ("pull-filter drop route", "unknown action"),
        ("pull-filter ignore", "pull-filter"),
        ("dhcp-option DNS6 10.0.0.1", "IPv6"),
        ("dhcp-option DOMAIN bad..name!", "domain"),
        ("ifconfig 10.8.0.2", "ifconfig"),
        ("ifconfig-ipv6 fd00::2/129", "ifconfig-ipv6"),
        ("topology star", "topology"),
    ],
)
def test_bad_values_are_one_line_errors(line: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as exc:
        parse(line + "\n")
    assert "\n" not in str(exc.value) and "line 9" in str(exc.value)


def test_pull_filter_first_match_wins_and_prefix_matches() -> None:
    p = parse(
        'pull-filter accept "route 10.9."\n'
        'pull-filter ignore "route "\n'
        'pull-filter ignore "dhcp-option"\n'
    )
    policy = PullPolicy(tuple(p.pull_filters), p.route_nopull)
    s = parse_push_options(
        [
            "route 10.9.0.0 255.255.0.0",
            "route 10.10.0.0 255.255.0.0",
            "route-ipv6 fd00:9::/64",
            "dhcp-option DNS 10.8.0.53",
            "ping 5",
        ],
        policy,
    )
    assert s.routes == [Route("10.9.0.0", "255.255.0.0", None, None)]
    assert s.routes_ipv6 == [Route6("fd00:9::/64", None, None)]  # "route " does not match "route-ipv6"
    assert s.dns_servers == [] and s.ping == 5
    assert s.filtered == ["route 10.10.0.0 255.255.0.0", "dhcp-option DNS 10.8.0.53"]


def test_pull_filter_reject_restarts() -> None:
    policy = PullPolicy((("reject", "redirect-gateway"),))
    with pytest.raises(PushRejected, match="redirect-gateway def1"):
        parse_push_options(["ping 5", "redirect-gateway def1"], policy)
    assert issubclass(PushRejected, RemoteProtocolError)


def test_route_nopull_drops_what_openvpn_drops() -> None:
    pushed = [
        "route 10.9.0.0 255.255.0.0",
        "route-ipv6 fd00:9::/64",
        "route-metric 9",
        "redirect-gateway def1",
        "block-ipv6",
        "dhcp-option DNS 10.8.0.53",
        "dns server 0 address 10.8.0.54",
        "route-gateway 10.8.0.1",
        "ifconfig 10.8.0.2 255.255.255.0",
        "topology subnet",
        "ping 5",
    ]
    s = parse_push_options(pushed, PullPolicy(route_nopull=True))
    assert not s.routes and not s.routes_ipv6 and s.redirect_gateway is None
    assert s.route_metric is None and not s.block_ipv6 and not s.dns_servers
    # addresses, the gateway and timers still come from the server
    assert s.route_gateway == "10.8.0.1" and s.ifconfig_local == "10.8.0.2" and s.ping == 5
    assert len(s.filtered) == 7
    # an accept rule does not override route-nopull (OpenVPN checks both)
    s = parse_push_options(pushed, PullPolicy((("accept", "route "),), route_nopull=True))
    assert not s.routes


def test_pushed_block_ipv6_and_topology_flag() -> None:
    s = parse_push_options(["block-ipv6", "topology subnet"])
    assert s.block_ipv6 and s.topology_pushed
    assert not parse_push_options(["ping 1"]).topology_pushed
    with pytest.raises(RemoteProtocolError, match="block-ipv6"):
        parse_push_options(["block-ipv6 now"])


def test_route_ipv6_without_bits_is_a_64_as_in_openvpn() -> None:
    """OpenVPN reads `route-ipv6 ADDR` as ADDR/64 (get_ipv6_addr's default); a /128 left the
    rest of that network outside the tunnel."""
    assert parse("route-ipv6 2001:db8:5::\n").routes_ipv6 == [Route6("2001:db8:5::/64", None, None)]
    assert parse_push_options(["route-ipv6 2001:db8:6::9"]).routes_ipv6 == [Route6("2001:db8:6::/64", None, None)]
    assert parse("route-ipv6 2001:db8:5::9/128\n").routes_ipv6 == [Route6("2001:db8:5::9/128", None, None)]
