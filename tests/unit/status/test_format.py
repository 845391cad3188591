"""Every field of every layout, on a hand-built snapshot whose expected text is written out."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from trivpn.status import (
    ClientEntry,
    ClientStatus,
    CompressionStats,
    RealAddress,
    RouteEntry,
    ServerStatus,
    StatusModelError,
    StatusVersion,
    escape_field,
    format_client_status,
    format_server_status,
)

T0 = 1795323354  # 2026-11-22 04:55:54 UTC
TITLE = "OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [DCO]"
ALICE = RealAddress(IPv4Address("10.99.1.2"), 53118)
BOB = RealAddress(IPv6Address("::ffff:10.99.2.2"), 45167, "tcp")
CAROL = RealAddress(IPv6Address("2001:db8::7"), 1194)


def snapshot() -> ServerStatus:
    return ServerStatus(
        title=TITLE,
        time=T0,
        clients=(
            ClientEntry(
                "client1", ALICE, IPv4Address("10.8.0.2"), IPv6Address("fd00:8::1000"),
                2519, 2631, T0 - 32, "alice", 1, 0, "AES-256-GCM",
            ),
            ClientEntry("client2", BOB, IPv4Address("10.8.0.50"), None, 7, 8, T0 - 4, None, 2, 1,
                        "CHACHA20-POLY1305"),
            ClientEntry(None, CAROL, None, None, 0, 0, T0, None, 3, 2, "BF-CBC"),
        ),
        routes=(
            RouteEntry(IPv4Address("10.8.0.2"), "client1", ALICE, T0 - 31),
            RouteEntry(IPv4Network("192.168.77.0/24"), "client2", BOB, T0 - 4),
            RouteEntry(IPv4Address("192.168.77.9"), "client2", BOB, T0, cached=True),
            RouteEntry(IPv6Network("fd00:77::/64"), "client2", BOB, T0 - 3),
        ),
        max_bcast_mcast_queue_length=1,
    )  # fmt: skip


V1 = """\
OpenVPN CLIENT LIST
Updated,2026-11-22 04:55:54
Common Name,Real Address,Bytes Received,Bytes Sent,Connected Since
client1,10.99.1.2:53118,2519,2631,2026-11-22 04:55:22
client2,10.99.2.2:45167,7,8,2026-11-22 04:55:50
UNDEF,2001:db8::7,0,0,2026-11-22 04:55:54
ROUTING TABLE
Virtual Address,Common Name,Real Address,Last Ref
10.8.0.2,client1,10.99.1.2:53118,2026-11-22 04:55:23
192.168.77.0/24,client2,10.99.2.2:45167,2026-11-22 04:55:50
192.168.77.9C,client2,10.99.2.2:45167,2026-11-22 04:55:54
fd00:77::/64,client2,10.99.2.2:45167,2026-11-22 04:55:51
GLOBAL STATS
Max bcast/mcast queue length,1
END
"""

V2 = f"""\
TITLE,{TITLE}
TIME,2026-11-22 04:55:54,1795323354
HEADER,CLIENT_LIST,Common Name,Real Address,Virtual Address,Virtual IPv6 Address,Bytes Received,\
Bytes Sent,Connected Since,Connected Since (time_t),Username,Client ID,Peer ID,Data Channel Cipher
CLIENT_LIST,client1,10.99.1.2:53118,10.8.0.2,fd00:8::1000,2519,2631,2026-11-22 04:55:22,\
1795323322,alice,1,0,AES-256-GCM
CLIENT_LIST,client2,10.99.2.2:45167,10.8.0.50,,7,8,2026-11-22 04:55:50,1795323350,UNDEF,2,1,\
CHACHA20-POLY1305
CLIENT_LIST,UNDEF,2001:db8::7,,,0,0,2026-11-22 04:55:54,1795323354,UNDEF,3,2,BF-CBC
HEADER,ROUTING_TABLE,Virtual Address,Common Name,Real Address,Last Ref,Last Ref (time_t)
ROUTING_TABLE,10.8.0.2,client1,10.99.1.2:53118,2026-11-22 04:55:23,1795323323
ROUTING_TABLE,192.168.77.0/24,client2,10.99.2.2:45167,2026-11-22 04:55:50,1795323350
ROUTING_TABLE,192.168.77.9C,client2,10.99.2.2:45167,2026-11-22 04:55:54,1795323354
ROUTING_TABLE,fd00:77::/64,client2,10.99.2.2:45167,2026-11-22 04:55:51,1795323351
GLOBAL_STATS,Max bcast/mcast queue length,1
GLOBAL_STATS,dco_enabled,0
END
"""


def test_v1_every_field() -> None:
    assert format_server_status(snapshot(), 1, tz=UTC) == V1


def test_v2_every_field() -> None:
    assert format_server_status(snapshot(), 2, tz=UTC) == V2


def test_v3_is_v2_with_tabs() -> None:
    # No value in the snapshot contains a comma, so v3 is exactly v2 with TAB columns.
    assert format_server_status(snapshot(), 3, tz=UTC) == V2.replace(",", "\t")


def test_management_line_ends_are_crlf() -> None:
    for version in (1, 2, 3):
        lf = format_server_status(snapshot(), version, tz=UTC)
        crlf = format_server_status(snapshot(), version, tz=UTC, eol="\r\n")
        assert crlf == lf.replace("\n", "\r\n") and crlf.endswith("END\r\n")


def test_dco_enabled_and_empty_server() -> None:
    text = format_server_status(ServerStatus("t", 0, dco_enabled=True), 2, tz=UTC)
    assert text == (
        "TITLE,t\nTIME,1970-01-01 00:00:00,0\n"
        + V2.splitlines(keepends=True)[2]
        + "HEADER,ROUTING_TABLE,Virtual Address,Common Name,Real Address,Last Ref,"
        "Last Ref (time_t)\nGLOBAL_STATS,Max bcast/mcast queue length,0\n"
        "GLOBAL_STATS,dco_enabled,1\nEND\n"
    )


def test_dates_follow_the_zone() -> None:
    plus2 = timezone(timedelta(hours=2))
    text = format_server_status(ServerStatus("t", T0), 1, tz=plus2)
    assert "Updated,2026-11-22 06:55:54\n" in text


def test_client_block() -> None:
    stats = ClientStatus(T0, 144, 48, 2657, 2533, 64)
    assert format_client_status(stats, tz=UTC) == (
        "OpenVPN STATISTICS\nUpdated,2026-11-22 04:55:54\nTUN/TAP read bytes,144\n"
        "TUN/TAP write bytes,48\nTCP/UDP read bytes,2657\nTCP/UDP write bytes,2533\n"
        "Auth read bytes,64\nEND\n"
    )


def test_client_block_with_compression_and_crlf() -> None:
    stats = ClientStatus(T0, 1, 2, 3, 4, 5, CompressionStats(10, 9, 8, 7))
    assert format_client_status(stats, tz=UTC, eol="\r\n").split("\r\n")[7:] == [
        "pre-compress bytes,10",
        "post-compress bytes,9",
        "pre-decompress bytes,8",
        "post-decompress bytes,7",
        "END",
        "",
    ]


@pytest.mark.parametrize(
    ("text", "sep", "out"),
    [
        ("plain name-1.example", ",", "plain name-1.example"),
        ("a,b", ",", "a_b"),
        ("a,b", "\t", "a,b"),  # v3 splits on TAB only: commas are safe there
        ("a\tb", "\t", "a_b"),
        ("a\tb", ",", "a_b"),
        ("x\nCLIENT_LIST,evil", ",", "x_CLIENT_LIST_evil"),
        ("cr\rlf\r\n", "\t", "cr_lf__"),
        ("nul\x00del\x7f", ",", "nul_del_"),
        ("ls\u2028ps\u2029nel\x85", ",", "ls_ps_nel_"),
        ("Jürgen", ",", "Jürgen"),
    ],
)
def test_escape_field(text: str, sep: str, out: str) -> None:
    assert escape_field(text, sep) == out


def test_hostile_common_name_cannot_forge_a_line() -> None:
    evil = "x,1.2.3.4:5,0,0,2026-01-01 00:00:00\nEND\nCLIENT_LIST\tforged"
    client = ClientEntry(evil, ALICE, None, None, 0, 0, T0, evil, 1, 1, "AES-256-GCM")
    route = RouteEntry(IPv4Address("10.8.0.2"), evil, ALICE, T0)
    status = ServerStatus(TITLE, T0, (client,), (route,))
    cases: list[tuple[StatusVersion, str, int]] = [(1, ",", 5), (2, ",", 13), (3, "\t", 13)]
    for version, sep, width in cases:
        lines = format_server_status(status, version, tz=UTC).split("\n")
        assert lines.count("END") == 1 and lines[-2:] == ["END", ""]
        assert len(lines) == (11 if version == 1 else 10)  # incl. the "" after the final newline
        row = lines[3].split(sep)  # the one client line comes after three lines in all layouts
        assert len(row) == width
        escaped = evil.replace("\n", "_").replace(sep, "_").replace("\t", "_")
        assert row[0 if version == 1 else 1] == escaped
        assert escaped.startswith("x") and "END" in escaped  # the payload is visible, inert


def test_bad_version_and_eol() -> None:
    with pytest.raises(StatusModelError):
        format_server_status(snapshot(), 4, tz=UTC)  # type: ignore[arg-type]  # the point
    with pytest.raises(StatusModelError):
        format_server_status(snapshot(), 1, eol="\r")
    with pytest.raises(StatusModelError):
        format_client_status(ClientStatus(0, 0, 0, 0, 0, 0), eol="")
