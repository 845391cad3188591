"""Model values are checked at construction; the reference's observed samples come out exactly."""

from __future__ import annotations

from datetime import UTC
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from typing import Any

import pytest

from trivpn.errors import TrivpnError
from trivpn.status import (
    ClientEntry,
    ClientStatus,
    CompressionStats,
    RealAddress,
    RouteEntry,
    ServerStatus,
    StatusModelError,
    format_client_status,
    format_server_status,
)
from trivpn.status.model import MAX_COUNTER, MAX_ID, MAX_TIME

ADDR = RealAddress(IPv4Address("10.99.1.2"), 53118)


def _client(**over: Any) -> ClientEntry:
    values: dict[str, Any] = dict(
        common_name="c", real_address=ADDR, virtual_v4=None, virtual_v6=None, bytes_received=0,
        bytes_sent=0, connected_since=0, username=None, client_id=0, peer_id=0, cipher="x",
    )  # fmt: skip
    values.update(over)
    return ClientEntry(**values)


@pytest.mark.parametrize(
    "over",
    [
        {"bytes_received": -1},
        {"bytes_sent": MAX_COUNTER + 1},
        {"connected_since": MAX_TIME + 1},
        {"client_id": MAX_ID + 1},
        {"peer_id": -5},
        {"bytes_sent": True},
        {"bytes_sent": 1.5},
        {"common_name": b"bytes"},
        {"username": 3},
        {"cipher": None},
        {"real_address": "10.0.0.1:1"},
        {"virtual_v4": IPv6Address("::1")},
        {"virtual_v6": IPv4Address("10.0.0.1")},
    ],
)
def test_client_entry_rejects(over: dict[str, Any]) -> None:
    with pytest.raises(StatusModelError):
        _client(**over)


def test_errors_are_trivpn_and_value_errors() -> None:
    assert issubclass(StatusModelError, TrivpnError) and issubclass(StatusModelError, ValueError)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RealAddress(IPv4Address("1.2.3.4"), 65536),
        lambda: RealAddress("1.2.3.4", 1),  # type: ignore[arg-type]  # a str is the bug
        lambda: RealAddress(IPv4Address("1.2.3.4"), 1, "sctp"),  # type: ignore[arg-type]
        lambda: RouteEntry("10.0.0.0/8", None, ADDR, 0),  # type: ignore[arg-type]
        lambda: RouteEntry(IPv4Address("10.0.0.1"), None, ADDR, -1),
        lambda: ServerStatus("t", -1),
        lambda: ServerStatus(None, 0),  # type: ignore[arg-type]
        lambda: ServerStatus("t", 0, clients=("x",)),  # type: ignore[arg-type]
        lambda: ServerStatus("t", 0, routes=(ADDR,)),  # type: ignore[arg-type]
        lambda: ServerStatus("t", 0, max_bcast_mcast_queue_length=2**31),
        lambda: ClientStatus(0, 0, 0, 0, 0, -1),
        lambda: ClientStatus(0, 0, 0, 0, 0, 0, (1, 2, 3, 4)),  # type: ignore[arg-type]
        lambda: CompressionStats(0, 0, 0, MAX_COUNTER + 1),
    ],
)
def test_other_values_rejected(make: Any) -> None:
    with pytest.raises(StatusModelError):
        make()


def test_snapshots_are_frozen() -> None:
    entry = _client()
    with pytest.raises(AttributeError):
        entry.bytes_sent = 5  # type: ignore[misc]  # frozen: the point of the test


def test_extremes_format() -> None:
    entry = _client(bytes_received=MAX_COUNTER, connected_since=MAX_TIME, peer_id=MAX_ID)
    text = format_server_status(ServerStatus("t", MAX_TIME, (entry,)), 2, tz=UTC)
    assert f",{MAX_COUNTER},0,9999-12-30 00:00:00,{MAX_TIME},UNDEF,0,{MAX_ID},x\n" in text


# The samples in shared/reference/openvpn-server.md §3, observed on Debian's openvpn 2.6.14
# (the lab ran in UTC: TIME's text and time_t agree there).
REFERENCE_V2 = """\
TITLE,OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [PKCS11] \
[MH/PKTINFO] [AEAD] [DCO]
TIME,2026-11-22 04:55:54,1795323354
HEADER,CLIENT_LIST,Common Name,Real Address,Virtual Address,Virtual IPv6 Address,Bytes Received,\
Bytes Sent,Connected Since,Connected Since (time_t),Username,Client ID,Peer ID,Data Channel Cipher
CLIENT_LIST,client1,10.99.1.2:53118,10.8.0.2,fd00:8::1000,2519,2631,2026-11-22 04:55:22,\
1795323322,alice,1,0,AES-256-GCM
HEADER,ROUTING_TABLE,Virtual Address,Common Name,Real Address,Last Ref,Last Ref (time_t)
ROUTING_TABLE,10.8.0.2,client1,10.99.1.2:53118,2026-11-22 04:55:23,1795323323
GLOBAL_STATS,Max bcast/mcast queue length,1
GLOBAL_STATS,dco_enabled,0
END
"""

REFERENCE_V1 = """\
OpenVPN CLIENT LIST
Updated,2026-11-22 04:56:02
Common Name,Real Address,Bytes Received,Bytes Sent,Connected Since
client1,10.99.1.2:53118,2915,2995,2026-11-22 04:55:22
ROUTING TABLE
Virtual Address,Common Name,Real Address,Last Ref
10.8.0.50,client2,10.99.2.2:45167,2026-11-22 04:56:02
192.168.77.0/24,client2,10.99.2.2:45167,2026-11-22 04:55:50
fd00:8::1000,client1,10.99.1.2:53118,2026-11-22 04:55:23
GLOBAL STATS
Max bcast/mcast queue length,1
END
"""

REFERENCE_CLIENT = """\
OpenVPN STATISTICS
Updated,2026-11-22 04:55:43
TUN/TAP read bytes,144
TUN/TAP write bytes,48
TCP/UDP read bytes,2657
TCP/UDP write bytes,2533
Auth read bytes,64
END
"""


def test_reference_samples_reproduced() -> None:
    title = REFERENCE_V2.splitlines()[0].removeprefix("TITLE,")
    c1 = _client(
        common_name="client1", virtual_v4=IPv4Address("10.8.0.2"),
        virtual_v6=IPv6Address("fd00:8::1000"), bytes_received=2519, bytes_sent=2631,
        connected_since=1795323322, username="alice", client_id=1, cipher="AES-256-GCM",
    )  # fmt: skip
    r1 = RouteEntry(IPv4Address("10.8.0.2"), "client1", ADDR, 1795323323)
    v2 = ServerStatus(title, 1795323354, (c1,), (r1,), 1)
    assert format_server_status(v2, 2, tz=UTC) == REFERENCE_V2

    bob = RealAddress(IPv4Address("10.99.2.2"), 45167)
    c1b = _client(common_name="client1", bytes_received=2915, bytes_sent=2995,
                  connected_since=1795323322)  # fmt: skip
    routes = (
        RouteEntry(IPv4Address("10.8.0.50"), "client2", bob, 1795323362),
        RouteEntry(IPv4Network("192.168.77.0/24"), "client2", bob, 1795323350),
        RouteEntry(IPv6Address("fd00:8::1000"), "client1", ADDR, 1795323323),
    )
    v1 = ServerStatus(title, 1795323362, (c1b,), routes, 1)
    assert format_server_status(v1, 1, tz=UTC) == REFERENCE_V1

    stats = ClientStatus(1795323343, 144, 48, 2657, 2533, 64)
    assert format_client_status(stats, tz=UTC) == REFERENCE_CLIENT
