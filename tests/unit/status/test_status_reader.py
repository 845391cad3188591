"""Our version 1 report through code nobody here wrote: PyPI `openvpn-status-reader`.

It is the maintained fork of `openvpn-status` that reads OpenVPN 2.5+ dates. Both install the
module `openvpn_status` (see the check below). Its parser needs `host:port` real addresses,
so native-IPv6 clients (printed without a port by OpenVPN 2.6 too) are kept out of this
snapshot.
"""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from helpers.require import in_ci, require_module

from trivpn.status import ClientEntry, RealAddress, RouteEntry, ServerStatus, format_server_status

openvpn_status = require_module("openvpn_status")  # PyPI openvpn-status-reader, extra "test"
if not hasattr(openvpn_status.utils, "DATETIME_FORMAT_OPENVPN_V2_5"):
    # PyPI `openvpn-status` (pulled in by `openvpn-management-api`) installs the SAME module
    # name without 2.5+ date support; whichever is installed last owns `openvpn_status`.
    # Fix: `pip install --force-reinstall --no-deps openvpn-status-reader` (API-compatible).
    _why = "`openvpn_status` is the old openvpn-status package, not openvpn-status-reader"
    if in_ci():
        pytest.fail(f"CI=true, so not skipping: {_why}", pytrace=False)
    pytest.skip(_why, allow_module_level=True)


T0 = 1795323354
ALICE = RealAddress(IPv4Address("10.99.1.2"), 53118)
BOB = RealAddress(IPv6Address("::ffff:10.99.2.2"), 45167)


def _naive(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC).replace(tzinfo=None)


def test_v1_parses_with_openvpn_status_reader_every_field() -> None:
    status = ServerStatus(
        "ignored in v1",
        T0,
        clients=(
            ClientEntry("client1", ALICE, IPv4Address("10.8.0.2"), None, 2519, 2631, T0 - 32,
                        "alice", 1, 0, "AES-256-GCM"),
            ClientEntry("a,b\nEND", BOB, None, None, 7, 2**40, T0 - 4, None, 2, 1, "AES-128-GCM"),
        ),
        routes=(
            RouteEntry(IPv4Address("10.8.0.2"), "client1", ALICE, T0 - 31),
            RouteEntry(IPv4Network("192.168.77.0/24"), "a,b\nEND", BOB, T0 - 4),
            RouteEntry(IPv4Address("192.168.77.9"), "a,b\nEND", BOB, T0 - 2, cached=True),
            RouteEntry(IPv6Network("fd00:77::/64"), "a,b\nEND", BOB, T0 - 3),
        ),
        max_bcast_mcast_queue_length=3,
    )  # fmt: skip
    text = format_server_status(status, 1, tz=UTC)
    parsed = openvpn_status.parse_status(text)

    assert parsed.updated_at == _naive(T0)
    assert list(parsed.client_list) == ["10.99.1.2:53118", "10.99.2.2:45167"]
    c1 = parsed.client_list["10.99.1.2:53118"]
    assert c1.common_name == "client1"
    assert (c1.real_address.host, c1.real_address.port) == (IPv4Address("10.99.1.2"), 53118)
    assert (int(c1.bytes_received), int(c1.bytes_sent)) == (2519, 2631)
    assert c1.connected_since == _naive(T0 - 32)
    c2 = parsed.client_list["10.99.2.2:45167"]
    assert c2.common_name == "a_b_END"
    assert (int(c2.bytes_received), int(c2.bytes_sent)) == (7, 2**40)
    assert c2.connected_since == _naive(T0 - 4)

    routes = parsed.routing_table
    assert list(routes) == ["10.8.0.2", "192.168.77.0/24", "192.168.77.9", "fd00:77::/64"]
    assert routes["10.8.0.2"].virtual_address == IPv4Address("10.8.0.2")
    assert routes["192.168.77.0/24"].virtual_address == IPv4Network("192.168.77.0/24")
    assert routes["192.168.77.9"].virtual_address == IPv4Address("192.168.77.9")  # "C" read
    assert routes["fd00:77::/64"].virtual_address == IPv6Network("fd00:77::/64")
    assert routes["10.8.0.2"].common_name == "client1"
    assert routes["192.168.77.0/24"].common_name == "a_b_END"
    assert str(routes["192.168.77.0/24"].real_address) == "10.99.2.2:45167"
    assert routes["10.8.0.2"].last_ref == _naive(T0 - 31)
    assert routes["192.168.77.9"].last_ref == _naive(T0 - 2)
    assert parsed.global_stats.max_bcast_mcast_queue_len == 3


def test_v1_empty_server_parses() -> None:
    parsed = openvpn_status.parse_status(format_server_status(ServerStatus("t", T0), 1, tz=UTC))
    assert parsed.updated_at == _naive(T0)
    assert not parsed.client_list and not parsed.routing_table
    assert parsed.global_stats.max_bcast_mcast_queue_len == 0
