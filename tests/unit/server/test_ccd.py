"""Tests for the client-config-dir file parser (trivpn.server.ccd)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.errors import ConfigError
from trivpn.server.ccd import CcdEntry, load_ccd, parse_ccd
from trivpn.server.config import parse_server_config
from trivpn.server.pool import AddressPool
from trivpn.server.pool_types import IfconfigIPv6Push, IfconfigPush

CLIENT2 = """\
# ccd/client2: a fixed address and the office LAN behind this client
ifconfig-push 10.8.0.50 255.255.255.0
ifconfig-ipv6-push fd00:8::50/64 fd00:8::1
iroute 192.168.77.0 255.255.255.0
iroute-ipv6 fd00:77::/64
push "route 192.168.88.0 255.255.255.0"
push "dhcp-option DNS 10.8.0.53"
push-remove dhcp-option
"""


def test_real_looking_ccd() -> None:
    entry = parse_ccd(CLIENT2)
    assert entry == CcdEntry(
        ifconfig_push=(IPv4Address("10.8.0.50"), IPv4Address("255.255.255.0")),
        ifconfig_ipv6_push=IfconfigIPv6Push(
            IPv6Address("fd00:8::50"), 64, IPv6Address("fd00:8::1")
        ),
        iroutes=(IPv4Network("192.168.77.0/24"),),
        iroutes_ipv6=(IPv6Network("fd00:77::/64"),),
        push=("route 192.168.88.0 255.255.255.0", "dhcp-option DNS 10.8.0.53"),
        push_remove=("dhcp-option",),
    )


def test_net30_pair_host_iroute_and_flags() -> None:
    entry = parse_ccd("ifconfig-push 10.9.0.22 10.9.0.21\niroute 10.20.0.7\npush-reset\ndisable\n")
    assert entry.ifconfig_push == (IPv4Address("10.9.0.22"), IPv4Address("10.9.0.21"))
    assert entry.ipv4_push("net30") == IfconfigPush(
        IPv4Address("10.9.0.22"), IPv4Address("10.9.0.21"), net30=True
    )
    assert parse_ccd("").ipv4_push("subnet") is None
    assert entry.iroutes == (IPv4Network("10.20.0.7/32"),)
    assert entry.push_reset and entry.disable
    assert entry.ifconfig_ipv6_push is None


def test_fixed_address_reserved_in_the_pool() -> None:
    keys = (
        "<ca>\n-----BEGIN CERTIFICATE-----\n</ca>\n<cert>\n-----BEGIN CERTIFICATE-----\n"
        "</cert>\n<key>\n-----BEGIN PRIVATE KEY-----\n</key>\n"
    )
    cfg = parse_server_config(
        "dev tun\ntopology subnet\nserver 10.8.0.0 255.255.255.0\nserver-ipv6 fd00:8::/64\n" + keys
    )
    entry = parse_ccd(CLIENT2)
    pool = AddressPool(cfg.pool, cfg.pool_ipv6)
    lease = pool.reserve_fixed(
        "client2", ipv4=entry.ipv4_push(cfg.topology), ipv6=entry.ifconfig_ipv6_push, now=0.0
    )
    assert [p.option for p in lease.pushes()] == [
        "ifconfig-ipv6 fd00:8::50/64 fd00:8::1",
        "ifconfig 10.8.0.50 255.255.255.0",
    ]


def test_empty_file_and_ipv6_push_without_remote() -> None:
    assert parse_ccd("") == CcdEntry()
    entry = parse_ccd("ifconfig-ipv6-push fd00:8::99/64\n")
    assert entry.ifconfig_ipv6_push == IfconfigIPv6Push(IPv6Address("fd00:8::99"), 64, None)
    assert entry.ifconfig_ipv6_push.option == "ifconfig-ipv6 fd00:8::99/64"


def test_other_options_warn() -> None:
    entry = parse_ccd("comp-lzo no\nifconfig-push 10.8.0.7 255.255.255.0\n<ca>\nx\n</ca>\n")
    assert entry.warnings == (
        "option 'comp-lzo' (line 1) is not supported in a client-config-dir file and was ignored",
        "option 'ca' (line 3) is not supported in a client-config-dir file and was ignored",
    )
    assert entry.ifconfig_push is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ifconfig-push 10.8.0.50\n", "line 1: option 'ifconfig-push': takes 2 to 3 arguments"),
        ("ifconfig-push 10.8.0.500 255.255.255.0\n", "is not an IPv4 address"),
        ("ifconfig-ipv6-push fd00::5\n", "/bits prefix length"),
        ("ifconfig-ipv6-push fd00::5/129\n", "is not an IPv6 address/bits"),
        ("ifconfig-ipv6-push fd00::5/64 nope\n", "is not an IPv6 address"),
        ("\niroute 192.168.77.1 255.255.255.0\n", "line 2: option 'iroute': 192.168.77.1"),
        ("iroute\n", "takes 1 to 2 arguments"),
        ("iroute-ipv6 fd00:77::1/64\n", "is not an IPv6 network/bits"),
        ('push "a,b"\n', "cannot contain ','"),
        ('push ""\n', "empty option"),
        ("push-reset now\n", "takes exactly 0 arguments"),
        ("disable yes\n", "takes exactly 0 arguments"),
        ("push-remove\n", "takes exactly 1 argument"),
        ('push "open\n', "no closing quotation"),
    ],
)
def test_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_ccd(text)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_load_ccd(tmp_path: Path) -> None:
    (tmp_path / "client2").write_text(CLIENT2)
    assert load_ccd(tmp_path / "client2").iroutes == (IPv4Network("192.168.77.0/24"),)
    with pytest.raises(ConfigError, match="cannot read ccd file"):
        load_ccd(tmp_path / "nobody")
    (tmp_path / "bad").write_text("iroute x\n")
    with pytest.raises(ConfigError, match=r"bad: line 1: option 'iroute'"):
        load_ccd(tmp_path / "bad")
    (tmp_path / "big").write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_ccd(tmp_path / "big")
    with pytest.raises(ConfigError, match="larger than"):
        parse_ccd("#" * ((1 << 20) + 1))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_only_raises_config_error(text: str) -> None:
    try:
        parse_ccd(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
