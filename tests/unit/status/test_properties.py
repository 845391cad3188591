"""Any snapshot, any names: each record stays one line with its layout's column count."""

from __future__ import annotations

from datetime import UTC
from ipaddress import IPv4Network, IPv6Network

from hypothesis import given
from hypothesis import strategies as st

from trivpn.status import (
    ClientEntry,
    ClientStatus,
    CompressionStats,
    RealAddress,
    RouteEntry,
    ServerStatus,
    escape_field,
    format_client_status,
    format_server_status,
)
from trivpn.status.format import time_text
from trivpn.status.model import MAX_COUNTER, MAX_ID, MAX_TIME

times = st.integers(0, MAX_TIME)
counters = st.integers(0, MAX_COUNTER)
ids = st.integers(0, MAX_ID)
names = st.text(max_size=20)  # any code point: commas, TABs, CR/LF, U+2028, NUL ...
hosts = st.ip_addresses()
real = st.builds(RealAddress, hosts, st.integers(0, 65535), st.sampled_from(["udp", "tcp"]))
virtual = st.one_of(
    st.ip_addresses(),
    st.builds(
        lambda a, n: IPv4Network((a, n), strict=False), st.ip_addresses(v=4), st.integers(0, 32)
    ),
    st.builds(
        lambda a, n: IPv6Network((a, n), strict=False), st.ip_addresses(v=6), st.integers(0, 128)
    ),
)
clients = st.builds(
    ClientEntry,
    st.none() | names,
    real,
    st.none() | st.ip_addresses(v=4),
    st.none() | st.ip_addresses(v=6),
    counters,
    counters,
    times,
    st.none() | names,
    ids,
    ids,
    names,
)
routes = st.builds(RouteEntry, virtual, st.none() | names, real, times, st.booleans())
servers = st.builds(
    ServerStatus,
    names,
    times,
    st.lists(clients, max_size=4).map(tuple),
    st.lists(routes, max_size=4).map(tuple),
    st.integers(0, 2**31 - 1),
    st.booleans(),
)


@given(servers, st.sampled_from([1, 2, 3]), st.sampled_from(["\n", "\r\n"]))
def test_server_report_shape(status: ServerStatus, version: int, eol: str) -> None:
    text = format_server_status(status, version, tz=UTC, eol=eol)  # type: ignore[arg-type]
    assert text.endswith("END" + eol)
    lines = text[: -len(eol)].split(eol)
    # splitlines() also splits on \x0b, \x1c, U+2028 ...: none of them may survive a field.
    assert text.splitlines() == lines
    n, r = len(status.clients), len(status.routes)
    assert len(lines) == (8 if version == 1 else 7) + n + r
    assert lines.count("END") == 1
    if version == 1:
        head = lines[:3]
        rows = lines[3 : 3 + n]
        assert head[0] == "OpenVPN CLIENT LIST" and lines[3 + n] == "ROUTING TABLE"
        assert all(len(ln.split(",")) == 5 for ln in [head[2], *rows])
        assert all(len(ln.split(",")) == 4 for ln in lines[4 + n : 5 + n + r])
        assert lines[5 + n + r] == "GLOBAL STATS"
        assert (
            lines[6 + n + r]
            == f"Max bcast/mcast queue length,{status.max_bcast_mcast_queue_length}"
        )
        return
    sep = "," if version == 2 else "\t"
    cols = [ln.split(sep) for ln in lines[:-1]]
    tags = [c[0] for c in cols]
    assert (
        tags
        == ["TITLE", "TIME", "HEADER"]
        + ["CLIENT_LIST"] * n
        + ["HEADER"]
        + ["ROUTING_TABLE"] * r
        + ["GLOBAL_STATS"] * 2
    )
    widths = [len(c) for c in cols]
    assert widths == [2, 3, 14] + [13] * n + [7] + [6] * r + [3, 3]
    for c, entry in zip(cols[3 : 3 + n], status.clients, strict=True):
        assert c[7:12] == [
            time_text(entry.connected_since, UTC),
            str(entry.connected_since),
            escape_field("UNDEF" if entry.username is None else entry.username, sep),
            str(entry.client_id),
            str(entry.peer_id),
        ]
        assert (c[5], c[6]) == (str(entry.bytes_received), str(entry.bytes_sent))


@given(
    st.builds(
        ClientStatus,
        times,
        counters,
        counters,
        counters,
        counters,
        counters,
        st.none() | st.builds(CompressionStats, counters, counters, counters, counters),
    )
)
def test_client_report_shape(status: ClientStatus) -> None:
    lines = format_client_status(status, tz=UTC).split("\n")
    assert lines[0] == "OpenVPN STATISTICS" and lines[-2:] == ["END", ""]
    assert len(lines) == (9 if status.compression is None else 13)
    assert all(len(ln.split(",")) == 2 for ln in lines[1:-2])
    assert lines[3].split(",")[1] == str(status.tun_write_bytes)
