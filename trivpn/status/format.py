"""OpenVPN 2.6's status report layouts, byte for byte, from a `ServerStatus`/`ClientStatus`.

Theory of operation. OpenVPN has three server layouts: version 1 (section titles, comma
columns, no time_t), version 2 (every line tagged: TITLE, TIME, HEADER, CLIENT_LIST,
ROUTING_TABLE, GLOBAL_STATS, END; comma columns) and version 3 (version 2 with TAB columns).
A client always writes the one STATISTICS block, whatever the version. The status file uses
`\n` line ends; the management interface sends the same text with `\r\n` (`eol`). Dates are
`YYYY-MM-DD HH:MM:SS` in local time (2.5+); `tz` overrides the zone so tests are stable.

Escaping (our choice; OpenVPN prints names raw, so a certificate CN `a,b` shifts its columns
and a CN with a newline could forge a line). Every field passes through `escape_field`: any
character that is not printable (`str.isprintable`: control characters incl. TAB, CR, LF,
and Unicode line/paragraph separators) or that is the layout's column separator (`,` for
versions 1 and 2 and the client block, TAB for version 3) becomes `_`. So each record is
exactly one line with a fixed number of columns, whatever a peer puts in its certificate or
username; names made of ordinary printable characters come out unchanged, as OpenVPN's.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from trivpn.status.model import (
    ClientEntry,
    ClientStatus,
    RealAddress,
    RouteEntry,
    ServerStatus,
    StatusModelError,
)

StatusVersion = Literal[1, 2, 3]
#: What OpenVPN prints for a missing common name or username.
UNDEF = "UNDEF"
REPLACEMENT = "_"

V1_CLIENT_HEADER = (
    "Common Name",
    "Real Address",
    "Bytes Received",
    "Bytes Sent",
    "Connected Since",
)
V1_ROUTE_HEADER = ("Virtual Address", "Common Name", "Real Address", "Last Ref")
CLIENT_LIST_HEADER = (
    "Common Name",
    "Real Address",
    "Virtual Address",
    "Virtual IPv6 Address",
    "Bytes Received",
    "Bytes Sent",
    "Connected Since",
    "Connected Since (time_t)",
    "Username",
    "Client ID",
    "Peer ID",
    "Data Channel Cipher",
)
ROUTING_TABLE_HEADER = (
    "Virtual Address",
    "Common Name",
    "Real Address",
    "Last Ref",
    "Last Ref (time_t)",
)
QUEUE_LABEL = "Max bcast/mcast queue length"


def escape_field(text: str, sep: str) -> str:
    """`text` with non-printable characters and `sep` replaced by `_` (see module doc)."""
    if text.isprintable() and sep not in text:
        return text
    return "".join(c if c.isprintable() and c != sep else REPLACEMENT for c in text)


def time_text(t: int, tz: tzinfo | None = None) -> str:
    """time_t as OpenVPN 2.6 prints it: `YYYY-MM-DD HH:MM:SS`, local time unless `tz`."""
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S")


def real_address_text(addr: RealAddress) -> str:
    """`a.b.c.d:port`; a v4-mapped IPv6 as its IPv4 with port; other IPv6 without port
    (OpenVPN 2.6 finds `v6addr:port` too ambiguous to print)."""
    host = addr.host
    if isinstance(host, IPv6Address):
        mapped = host.ipv4_mapped
        if mapped is None:
            return str(host)
        host = mapped
    return f"{host}:{addr.port}"


def virtual_address_text(route: RouteEntry) -> str:
    """A host address bare, a network with `/prefixlen`, a cached route with a `C` suffix."""
    v = route.virtual
    text = (
        str(v) if isinstance(v, IPv4Address | IPv6Address) else f"{v.network_address}/{v.prefixlen}"
    )
    return text + ("C" if route.cached else "")


def _line(fields: Iterable[str], sep: str) -> str:
    return sep.join(escape_field(f, sep) for f in fields)


def _name(value: str | None) -> str:
    return UNDEF if value is None else value


def _check_eol(eol: str) -> None:
    if eol not in ("\n", "\r\n"):
        raise StatusModelError(f"eol must be '\\n' or '\\r\\n', not {eol!r}")


def _v1_lines(s: ServerStatus, tz: tzinfo | None) -> list[str]:
    sep = ","
    lines = ["OpenVPN CLIENT LIST", _line(("Updated", time_text(s.time, tz)), sep)]
    lines.append(_line(V1_CLIENT_HEADER, sep))
    for c in s.clients:
        lines.append(
            _line(
                (
                    _name(c.common_name),
                    real_address_text(c.real_address),
                    str(c.bytes_received),
                    str(c.bytes_sent),
                    time_text(c.connected_since, tz),
                ),
                sep,
            )
        )
    lines += ["ROUTING TABLE", _line(V1_ROUTE_HEADER, sep)]
    for r in s.routes:
        lines.append(
            _line(
                (
                    virtual_address_text(r),
                    _name(r.common_name),
                    real_address_text(r.real_address),
                    time_text(r.last_ref, tz),
                ),
                sep,
            )
        )
    lines += ["GLOBAL STATS", _line((QUEUE_LABEL, str(s.max_bcast_mcast_queue_length)), sep)]
    lines.append("END")
    return lines


def _client_list_fields(c: ClientEntry, tz: tzinfo | None) -> tuple[str, ...]:
    return (
        "CLIENT_LIST",
        _name(c.common_name),
        real_address_text(c.real_address),
        "" if c.virtual_v4 is None else str(c.virtual_v4),
        "" if c.virtual_v6 is None else str(c.virtual_v6),
        str(c.bytes_received),
        str(c.bytes_sent),
        time_text(c.connected_since, tz),
        str(c.connected_since),
        _name(c.username),
        str(c.client_id),
        str(c.peer_id),
        c.cipher,
    )


def _tagged_lines(s: ServerStatus, sep: str, tz: tzinfo | None) -> list[str]:
    lines = [
        _line(("TITLE", s.title), sep),
        _line(("TIME", time_text(s.time, tz), str(s.time)), sep),
        _line(("HEADER", "CLIENT_LIST", *CLIENT_LIST_HEADER), sep),
    ]
    lines += [_line(_client_list_fields(c, tz), sep) for c in s.clients]
    lines.append(_line(("HEADER", "ROUTING_TABLE", *ROUTING_TABLE_HEADER), sep))
    for r in s.routes:
        fields = (
            "ROUTING_TABLE",
            virtual_address_text(r),
            _name(r.common_name),
            real_address_text(r.real_address),
            time_text(r.last_ref, tz),
            str(r.last_ref),
        )
        lines.append(_line(fields, sep))
    lines += [
        _line(("GLOBAL_STATS", QUEUE_LABEL, str(s.max_bcast_mcast_queue_length)), sep),
        _line(("GLOBAL_STATS", "dco_enabled", "1" if s.dco_enabled else "0"), sep),
        "END",
    ]
    return lines


def format_server_status(
    status: ServerStatus,
    version: StatusVersion = 1,
    *,
    tz: tzinfo | None = None,
    eol: str = "\n",
) -> str:
    """The server report in `status-version` 1, 2 or 3; every line, `END` too, ends in `eol`."""
    _check_eol(eol)
    if version == 1:
        lines = _v1_lines(status, tz)
    elif version == 2:
        lines = _tagged_lines(status, ",", tz)
    elif version == 3:
        lines = _tagged_lines(status, "\t", tz)
    else:
        raise StatusModelError(f"status version must be 1, 2 or 3, not {version!r}")
    return eol.join(lines) + eol


def format_client_status(status: ClientStatus, *, tz: tzinfo | None = None, eol: str = "\n") -> str:
    """The client (p2p) STATISTICS block, the same for every status version."""
    _check_eol(eol)
    rows: list[tuple[str, int]] = [
        ("TUN/TAP read bytes", status.tun_read_bytes),
        ("TUN/TAP write bytes", status.tun_write_bytes),
        ("TCP/UDP read bytes", status.link_read_bytes),
        ("TCP/UDP write bytes", status.link_write_bytes),
        ("Auth read bytes", status.auth_read_bytes),
    ]
    comp = status.compression
    if comp is not None:
        rows += [
            ("pre-compress bytes", comp.pre_compress),
            ("post-compress bytes", comp.post_compress),
            ("pre-decompress bytes", comp.pre_decompress),
            ("post-decompress bytes", comp.post_decompress),
        ]
    lines = ["OpenVPN STATISTICS", "Updated," + time_text(status.time, tz)]
    lines += [f"{label},{value}" for label, value in rows]
    lines.append("END")
    return eol.join(lines) + eol
