"""Tests for PUSH_REPLY reassembly and pushed-option parsing (trivpn.profile.push)."""

from __future__ import annotations

import pytest

from trivpn.errors import RemoteProtocolError
from trivpn.profile.push import (
    MAX_PEER_ID,
    MAX_PUSH_MESSAGES,
    PushReplyAssembler,
    Route,
    Route6,
    parse_push_options,
)

# Both real replies from a Debian 2.6.14 server (reference §5).
REAL_2614_CLIENT = (
    "PUSH_REPLY,route-gateway 10.99.0.1,topology subnet,ping 10,ping-restart 60,"
    "ifconfig 10.99.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM,"
    "protocol-flags cc-exit tls-ekm dyn-tls-crypt,tun-mtu 1500"
)
REAL_PYTHON_CLIENT = (
    "PUSH_REPLY,route-gateway 10.99.0.1,topology subnet,ping 2,ping-restart 10,"
    "ifconfig 10.99.0.2 255.255.255.0,peer-id 0,cipher AES-256-GCM"
)


def reply(message: str) -> list[str]:
    result = PushReplyAssembler().feed(message)
    assert result is not None
    return result


def test_real_reply_from_openvpn_client_profile() -> None:
    opts = reply(REAL_2614_CLIENT + "\0")
    assert opts[0] == "route-gateway 10.99.0.1" and len(opts) == 9
    s = parse_push_options(opts)
    assert s.route_gateway == "10.99.0.1"
    assert s.topology == "subnet"
    assert (s.ping, s.ping_restart) == (10, 60)
    assert (s.ifconfig_local, s.ifconfig_remote_or_mask) == ("10.99.0.2", "255.255.255.0")
    assert s.ipv4_interface() == ("10.99.0.2", 24, None)
    assert s.ipv4_prefixlen == 24
    assert s.peer_id == 0 and s.use_data_v2
    assert s.cipher == "AES-256-GCM"
    assert s.protocol_flags == frozenset({"cc-exit", "tls-ekm", "dyn-tls-crypt"})
    assert s.key_derivation_ekm  # implied by protocol-flags tls-ekm
    assert s.tun_mtu == 1500
    assert s.options == opts
    assert s.warnings == []
    assert s.redirect_gateway is None and not s.redirect_gateway_ipv6


def test_real_reply_from_python_client_and_ekm_variant() -> None:
    s = parse_push_options(reply(REAL_PYTHON_CLIENT))
    assert (s.ping, s.ping_restart, s.peer_id) == (2, 10, 0)
    assert not s.key_derivation_ekm
    assert s.protocol_flags == frozenset()
    assert s.tun_mtu is None
    s = parse_push_options(reply(REAL_PYTHON_CLIENT + ",key-derivation tls-ekm"))
    assert s.key_derivation_ekm


def test_defaults_and_bare_reply() -> None:
    assert reply("PUSH_REPLY") == []
    assert reply("PUSH_REPLY,") == []
    s = parse_push_options([])
    assert s.topology == "net30"
    assert s.ipv4_interface() is None and s.ipv4_prefixlen is None
    assert s.peer_id is None and not s.use_data_v2


def test_continuation() -> None:
    asm = PushReplyAssembler()
    assert asm.feed("PUSH_REPLY,route 10.1.0.0 255.255.0.0,push-continuation 2") is None
    assert asm.pending
    assert asm.feed("PUSH_REPLY,route 10.2.0.0 255.255.0.0,push-continuation 2\0") is None
    done = asm.feed("PUSH_REPLY,ifconfig 10.8.0.6 10.8.0.5,push-continuation 1")
    assert done == [
        "route 10.1.0.0 255.255.0.0",
        "route 10.2.0.0 255.255.0.0",
        "ifconfig 10.8.0.6 10.8.0.5",
    ]
    assert not asm.pending
    # the assembler starts afresh for the next reply (e.g. auth-token on renegotiation)
    assert asm.feed("PUSH_REPLY,auth-token SESS_ID_abc") == ["auth-token SESS_ID_abc"]


def test_continuation_last_part_without_marker() -> None:
    asm = PushReplyAssembler()
    assert asm.feed("PUSH_REPLY,ping 10,push-continuation 2") is None
    assert asm.feed("PUSH_REPLY,ping-restart 60") == ["ping 10", "ping-restart 60"]


@pytest.mark.parametrize(
    "message",
    [
        "AUTH_FAILED",
        "PUSH_REQUEST",
        "PUSH_REPLYX,ping 1",
        "push_reply,ping 1",
        "PUSH_REPLY,ping 1,push-continuation 3",
        "PUSH_REPLY,ping 1,push-continuation",
        "PUSH_REPLY,ping 1\x01",
        "PUSH_REPLY,dhcp-option DOMAIN caf\u00e9.example",
    ],
)
def test_assembler_rejects(message: str) -> None:
    with pytest.raises(RemoteProtocolError):
        PushReplyAssembler().feed(message)


def test_assembler_bounds_continuations() -> None:
    asm = PushReplyAssembler()
    with pytest.raises(RemoteProtocolError, match="too long"):
        for _ in range(MAX_PUSH_MESSAGES + 1):
            asm.feed("PUSH_REPLY,ping 1,push-continuation 2")
    assert not asm.pending


def test_net30_reply() -> None:
    # a 2.6 server with the default topology net30
    s = parse_push_options(
        reply(
            "PUSH_REPLY,route 10.8.0.1,topology net30,ping 10,ping-restart 120,"
            "ifconfig 10.8.0.6 10.8.0.5,peer-id 3,cipher AES-128-GCM"
        )
    )
    assert s.routes == [Route("10.8.0.1", "255.255.255.255", None, None)]
    assert s.ipv4_interface() == ("10.8.0.6", 32, "10.8.0.5")
    assert s.peer_id == 3
    assert s.cipher == "AES-128-GCM"


def test_routes_v4() -> None:
    s = parse_push_options(
        [
            "route 192.168.1.0 255.255.255.0",
            "route 10.0.0.0 255.0.0.0 10.8.0.1 5",
            "route 0.0.0.0 0.0.0.0 net_gateway",
            "route remote_host 255.255.255.255 net_gateway",
            "route 172.16.0.0 255.240.0.0 vpn_gateway default",
            "route 172.17.0.0 default default 7",
        ]
    )
    assert s.routes == [
        Route("192.168.1.0", "255.255.255.0", None, None),
        Route("10.0.0.0", "255.0.0.0", "10.8.0.1", 5),
        Route("0.0.0.0", "0.0.0.0", "net_gateway", None),
        Route("remote_host", "255.255.255.255", "net_gateway", None),
        Route("172.16.0.0", "255.240.0.0", "vpn_gateway", None),
        Route("172.17.0.0", "255.255.255.255", None, 7),
    ]


def test_ipv6_settings_and_routes() -> None:
    s = parse_push_options(
        [
            "ifconfig-ipv6 fd00:0:0:0::1000/64 fd00::1",
            "route-ipv6 fd01::/48",
            "route-ipv6 2001:db8::1/32 fd00::1 10",
            "route-ipv6 ::/1",
            "route-ipv6 8000::/1",
        ]
    )
    assert s.ifconfig_ipv6_local == "fd00::1000/64"
    assert s.ifconfig_ipv6_remote == "fd00::1"
    assert s.routes_ipv6 == [
        Route6("fd01::/48", None, None),
        Route6("2001:db8::/32", "fd00::1", 10),
        Route6("::/1", None, None),
        Route6("8000::/1", None, None),
    ]
    assert s.redirect_gateway_ipv6
    assert parse_push_options(["ifconfig-ipv6 fd00::2"]).ifconfig_ipv6_local == "fd00::2/64"
    assert parse_push_options(["route-ipv6 ::/0"]).redirect_gateway_ipv6
    assert not parse_push_options(["route-ipv6 ::/1"]).redirect_gateway_ipv6


def test_redirect_gateway() -> None:
    s = parse_push_options(["redirect-gateway def1 bypass-dhcp"])
    assert s.redirect_gateway == frozenset({"def1", "bypass-dhcp"})
    assert not s.redirect_gateway_ipv6
    s = parse_push_options(["redirect-gateway ipv6 !ipv4 teleport"])
    assert s.redirect_gateway == frozenset({"ipv6", "!ipv4"})
    assert s.redirect_gateway_ipv6
    assert len(s.warnings) == 1 and "teleport" in s.warnings[0]
    assert parse_push_options(["redirect-gateway"]).redirect_gateway == frozenset()


def test_dns_from_dhcp_option() -> None:
    s = parse_push_options(
        [
            "dhcp-option DNS 10.8.0.1",
            "dhcp-option DNS fd00::53",
            "dhcp-option DNS6 fd00::54",
            "dhcp-option DOMAIN corp.example",
            "dhcp-option DOMAIN-SEARCH lab.corp.example",
            "dhcp-option WINS 10.8.0.2",
        ]
    )
    assert s.dns_servers == ["10.8.0.1", "fd00::53", "fd00::54"]
    assert s.dns_domains == ["corp.example", "lab.corp.example"]
    assert s.warnings == ["pushed option 'dhcp-option WINS' is not supported and was ignored"]


def test_dns_option_overrides_dhcp_option() -> None:
    s = parse_push_options(
        [
            "dhcp-option DNS 10.8.0.1",
            "dhcp-option DOMAIN old.example",
            "dns server 2 address 10.9.0.2",
            "dns server 1 address 10.9.0.1 [fd00::1]:53 fd00::2",
            "dns server 1 resolve-domains corp.example",
            "dns search-domains a.example b.example",
        ]
    )
    assert s.dns_servers == ["10.9.0.1", "fd00::1", "fd00::2", "10.9.0.2"]
    assert s.dns_domains == ["a.example", "b.example"]
    assert s.dns_resolve_domains == []  # server 2 takes every name: no split DNS
    assert s.warnings == []


def test_resolve_domains_of_every_server_make_split_dns() -> None:
    s = parse_push_options(
        [
            "dns server 2 address 10.9.0.2",
            "dns server 2 resolve-domains lab.example corp.example",
            "dns server 1 address 10.9.0.1",
            "dns server 1 resolve-domains corp.example",
        ]
    )
    assert s.dns_servers == ["10.9.0.1", "10.9.0.2"]
    assert s.dns_resolve_domains == ["corp.example", "lab.example"]
    assert s.dns_domains == [] and s.warnings == []
    # as OpenVPN: "dns server 3 does not have an address assigned" restarts the session
    with pytest.raises(RemoteProtocolError, match="dns server 3 has resolve-domains but no address"):
        parse_push_options(["dns server 1 address 10.9.0.1", "dns server 3 resolve-domains x.example"])
    with pytest.raises(RemoteProtocolError, match="not a valid domain"):
        parse_push_options(["dns server 1 address 10.9.0.1", "dns server 1 resolve-domains bad..;x"])


def test_misc_options() -> None:
    s = parse_push_options(
        [
            "auth-token SESS_ID_AT_0123456789abcdef",
            "comp-lzo no",
            "ping 5",
            "ping-restart 30",
            "block-outside-dns",
            "explicit-exit-notify 3",
            "push-continuation 1",
            "# comment-ish",
        ]
    )
    assert s.auth_token == "SESS_ID_AT_0123456789abcdef"
    assert s.compression == "lzo-no"
    assert s.warnings == ["pushed option 'explicit-exit-notify' is not supported and was ignored"]
    assert parse_push_options(["compress"]).compression == "stub"
    assert parse_push_options(["compress stub-v2"]).compression == "stub-v2"
    s = parse_push_options(["peer-id 16777215"])
    assert s.peer_id == MAX_PEER_ID


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("ifconfig 10.8.0.300 255.255.255.0", "not an IPv4 address"),
        ("ifconfig 10.8.0.2", "arguments"),
        ("topology star", "unknown topology"),
        ("ifconfig-ipv6 fd00::1/200 fd00::2", "out of range"),
        ("ifconfig-ipv6 10.0.0.1/64", "not an IPv6 address"),
        ("peer-id 16777216", "out of range"),
        ("peer-id -1", "not a number"),
        ("peer-id 0x10", "not a number"),
        ("ping ten", "not a number"),
        ("ping-restart 99999999999999", "not a number"),
        ("tun-mtu 10", "out of range"),
        ("block-ipv6 x", "arguments"),
        ("cipher AES;rm", "invalid cipher"),
        ("key-derivation tls-prf", "unknown key derivation"),
        ("dhcp-option DNS 1.2.3", "not an IPv4 address"),
        ("dhcp-option DNS6 1.2.3.4", "not an IPv6 address"),
        ("dhcp-option DOMAIN bad..\\\\;domain", "not a valid domain"),
        ("dns server 1 address 10.0.0.1:99999", "out of range"),
        ("comp-lzo yes", "VORACLE"),
        ("comp-lzo", "VORACLE"),
        ("compress lz4-v2", "VORACLE"),
        ('cipher "unterminated', "malformed pushed option"),
        ("push-continuation 7", "push-continuation"),
    ],
)
def test_hostile_values(option: str, fragment: str) -> None:
    with pytest.raises(RemoteProtocolError, match=fragment) as exc:
        parse_push_options(["ping 1", option])
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        ("route 10.0.0.0 255.0.0.300", "'route': '255.0.0.300' is not an IPv4 address"),
        ("route 10.0.0.0 255.0.255.0", "not a valid netmask"),
        ("route vpnhost.example 255.255.255.255", "'route': 'vpnhost.example' is not an IPv4 address"),
        ("route 10.0.0.0 255.0.0.0 gw.example", "'gw.example' is not an IPv4 address"),
        ("route 10.0.0.0 255.0.0.0 10.8.0.1 -1", "not a number"),
        ("route 10.0.0.0 255.0.0.0 10.8.0.1 5 extra", "arguments"),
        ("route-ipv6 fd00::/129", "'route-ipv6': 'fd00::/129' is not an IPv6 network"),
        ("route-ipv6 fd00::/64 fd00::zz", "not an IPv6 address"),
        ("route-gateway 10.8.0.300", "'route-gateway': '10.8.0.300' is not an IPv4 address"),
        ("route-metric abc", "'route-metric': 'abc' is not a number"),
    ],
)
def test_malformed_route_options_are_skipped_with_a_warning_as_openvpn_does(option: str, fragment: str) -> None:
    """OpenVPN 2.6's client logs "Options error" for these and connects without them
    (checked against the real binary); a restart would never connect to such a server."""
    s = parse_push_options(
        ["route 10.211.0.0 255.255.0.0", option, "route-gateway 10.8.0.1", "route-metric 3", "ifconfig 10.8.0.2 10.8.0.1"]
    )
    assert s.routes[0] == Route("10.211.0.0", "255.255.0.0", None, None)
    assert len(s.routes) == 1 and s.routes_ipv6 == []
    assert (s.route_gateway, s.route_metric, s.ifconfig_local) == ("10.8.0.1", 3, "10.8.0.2")
    assert len(s.warnings) == 1 and "\n" not in s.warnings[0]
    assert fragment in s.warnings[0] and s.warnings[0].endswith("the option was ignored (as OpenVPN does)")


def test_topology_subnet_with_bad_mask_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="netmask"):
        parse_push_options(["topology subnet", "ifconfig 10.8.0.2 255.0.255.0"])


def test_unknown_options_warn() -> None:
    s = parse_push_options(["frobnicate 1", "route-metric 5", "ping 3"])
    assert s.ping == 3
    assert s.route_metric == 5  # applied since issue 13
    assert s.warnings == ["pushed option 'frobnicate' is not supported and was ignored"]
