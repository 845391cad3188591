"""trivpn.status's layouts against what Debian's openvpn 2.6 really writes.

A real server (`status FILE 1`, `status-version 2` or `3`, a management unix socket) and a
real client (`status FILE 1`) run in namespaces. Once the server's file lists the client, each
report is parsed back into trivpn's model and re-rendered by our formatter; the result must
equal OpenVPN's text byte for byte. Nothing is masked: every time field is round-tripped
(v2/v3: the time_t column is parsed and our formatter must reproduce the text date beside
it; v1 and the client block: the text date is parsed in local time). The only values taken
from OpenVPN rather than checked are the ones that are data, not layout: TITLE, counters,
addresses, ids and times. Reports are read whole (the file is rewritten in place each second,
so a read that does not end in `END` is retried).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

import pytest

from trivpn.status import (
    ClientEntry,
    ClientStatus,
    RealAddress,
    RouteEntry,
    ServerStatus,
    StatusVersion,
    format_client_status,
    format_server_status,
)
from trivpn.status.model import VirtualAddress
from trivpn.testing.netns import NetnsPair
from trivpn.testing.ovpn_server import OpenVPNServer, ServerOptions, client_profile
from trivpn.testing.pki import PKI, common_name

#: Bound on the client showing up in the server's status file (handshake + 1 s rewrite).
LISTED_TIMEOUT = 12.0
MGMT_TIMEOUT = 5.0
DATE = "%Y-%m-%d %H:%M:%S"


def _local_time_t(text: str) -> int:
    return int(datetime.strptime(text, DATE).timestamp())


def _real(text: str) -> RealAddress:
    if text.count(":") == 1:
        host, port = text.split(":")
        return RealAddress(ip_address(host), int(port))
    return RealAddress(IPv6Address(text), 0)  # OpenVPN 2.6 prints native IPv6 without port


def _virtual(text: str) -> tuple[VirtualAddress, bool]:
    cached = text.endswith("C")
    text = text.removesuffix("C")
    return (ip_network(text) if "/" in text else ip_address(text)), cached


def _parse_tagged(text: str, sep: str) -> ServerStatus:
    """A version 2/3 report as a ServerStatus, from its time_t columns (not its date text)."""
    title, now, queue, dco = "", 0, 0, False
    clients: list[ClientEntry] = []
    routes: list[RouteEntry] = []
    for line in text.splitlines():
        f = line.split(sep)
        if f[0] == "TITLE":
            title = sep.join(f[1:])
        elif f[0] == "TIME":
            now = int(f[2])
        elif f[0] == "CLIENT_LIST":
            assert len(f) == 13, line
            clients.append(
                ClientEntry(
                    common_name=f[1],
                    real_address=_real(f[2]),
                    virtual_v4=IPv4Address(f[3]) if f[3] else None,
                    virtual_v6=IPv6Address(f[4]) if f[4] else None,
                    bytes_received=int(f[5]),
                    bytes_sent=int(f[6]),
                    connected_since=int(f[8]),
                    username=None if f[9] == "UNDEF" else f[9],
                    client_id=int(f[10]),
                    peer_id=int(f[11]),
                    cipher=f[12],
                )
            )
        elif f[0] == "ROUTING_TABLE":
            assert len(f) == 6, line
            virtual, cached = _virtual(f[1])
            routes.append(RouteEntry(virtual, f[2], _real(f[3]), int(f[5]), cached))
        elif f[0] == "GLOBAL_STATS" and f[1] == "Max bcast/mcast queue length":
            queue = int(f[2])
        elif f[0] == "GLOBAL_STATS" and f[1] == "dco_enabled":
            dco = f[2] == "1"
    return ServerStatus(title, now, tuple(clients), tuple(routes), queue, dco)


def _parse_v1(text: str, title: str) -> ServerStatus:
    """A version 1 report as a ServerStatus (its dates read back in local time)."""
    lines = text.splitlines()
    now = _local_time_t(lines[1].split(",")[1])
    section, clients, routes, queue = "", [], [], 0
    for line in lines[2:]:
        f = line.split(",")
        if line in ("ROUTING TABLE", "GLOBAL STATS", "END"):
            section = line
        elif f[0] in ("Common Name", "Virtual Address"):
            continue
        elif section == "":
            assert len(f) == 5, line
            clients.append(
                ClientEntry(f[0], _real(f[1]), None, None, int(f[2]), int(f[3]),
                            _local_time_t(f[4]), None, 0, 0, "")
            )  # fmt: skip
        elif section == "ROUTING TABLE":
            virtual, cached = _virtual(f[0])
            routes.append(RouteEntry(virtual, f[1], _real(f[2]), _local_time_t(f[3]), cached))
        elif section == "GLOBAL STATS":
            queue = int(f[1])
    return ServerStatus(title, now, tuple(clients), tuple(routes), queue)


def _parse_client(text: str) -> ClientStatus:
    rows = dict(line.split(",", 1) for line in text.splitlines()[1:-1])
    return ClientStatus(
        time=_local_time_t(rows["Updated"]),
        tun_read_bytes=int(rows["TUN/TAP read bytes"]),
        tun_write_bytes=int(rows["TUN/TAP write bytes"]),
        link_read_bytes=int(rows["TCP/UDP read bytes"]),
        link_write_bytes=int(rows["TCP/UDP write bytes"]),
        auth_read_bytes=int(rows["Auth read bytes"]),
    )


def _read_whole(path: Path, needle: str, timeout: float, *more: str) -> str:
    """The file's text once it is complete (ends in END) and contains every needle."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\nEND\n") and all(n in text for n in (needle, *more)):
            return text
        time.sleep(0.1)
    raise AssertionError(f"{path.name} did not list {needle!r} within {timeout}s:\n{text}")


def _mgmt_status(sock_path: Path, version: int) -> str:
    """`status N` over the management socket: the reply's lines (CRLF), `>` notices dropped."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(MGMT_TIMEOUT)
        s.connect(str(sock_path))
        s.sendall(f"status {version}\n".encode())
        buf = b""
        deadline = time.monotonic() + MGMT_TIMEOUT
        while b"\r\nEND\r\n" not in buf and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        s.sendall(b"quit\n")
    text = buf.decode()
    assert text.endswith("\r\nEND\r\n"), text
    return "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith(">"))


@pytest.mark.root
# udp6: the client's real address is a native IPv6 one, which OpenVPN 2.6 prints without port.
@pytest.mark.parametrize(("version", "proto"), [(2, "udp"), (3, "udp6")])
def test_status_layout_matches_openvpn(
    version: StatusVersion,
    proto: str,
    pki: PKI,
    netns: NetnsPair,
    openvpn_server: Callable[[ServerOptions], OpenVPNServer],
    tmp_path: Path,
) -> None:
    mgmt = tmp_path / "mgmt.sock"
    opts = ServerOptions(
        proto=proto, extra=[f"status-version {version}", f"management {mgmt} unix"]
    )
    server = openvpn_server(opts)
    client_status = tmp_path / "client-status.log"
    profile = tmp_path / "client.ovpn"
    profile.write_text(
        client_profile(pki, opts, server.remote_host, extra=[f"status {client_status} 1"])
    )
    proc = netns.client.popen(
        ["openvpn", "--config", str(profile), "--log", str(tmp_path / "client.log")],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        cn = common_name(pki.client_cert)
        sep = "," if version == 2 else "\t"
        # OpenVPN lists a client as soon as its TLS session starts (no virtual address yet,
        # cipher shown as BF-CBC); wait for the established entry and its routes.
        file_text = _read_whole(
            server.workdir / "status.log",
            f"CLIENT_LIST{sep}{cn}{sep}",
            LISTED_TIMEOUT,
            f"{sep}AES-256-GCM\n",
            f"ROUTING_TABLE{sep}10.202.0.",
            f"ROUTING_TABLE{sep}fd00:202:",
        )
        parsed = _parse_tagged(file_text, sep)
        # The round trip only means something if the report really describes our client.
        (entry,) = parsed.clients
        client_ip = netns.client_v6 if proto == "udp6" else netns.client_v4
        assert entry.real_address.host == ip_address(client_ip)
        assert (entry.real_address.port > 0) == (proto == "udp")  # no port shown for IPv6
        assert str(entry.virtual_v4).startswith("10.202.0.")
        assert str(entry.virtual_v6).startswith("fd00:202:")
        assert entry.cipher == "AES-256-GCM" and entry.username is None
        assert {str(r.virtual) for r in parsed.routes} == {
            str(entry.virtual_v4),
            str(entry.virtual_v6),
        }
        assert parsed.title.startswith("OpenVPN 2.6")
        assert format_server_status(parsed, version) == file_text

        # The management interface: the same layouts with CRLF, all three versions.
        for v in (1, 2, 3):
            reply = _mgmt_status(mgmt, v)
            if v == 1:
                ours = _parse_v1(reply, parsed.title)
                assert len(ours.clients) == 1 and ours.clients[0].common_name == cn
            else:
                ours = _parse_tagged(reply, "," if v == 2 else "\t")
                assert ours.clients[0].common_name == cn
            assert format_server_status(ours, v, eol="\r\n") == reply, f"status {v}"

        # The client's own STATISTICS block.
        # (its first report, written at start-up, still has all counters at 0)
        deadline = time.monotonic() + LISTED_TIMEOUT
        while True:
            text = _read_whole(client_status, "OpenVPN STATISTICS", LISTED_TIMEOUT)
            stats = _parse_client(text)
            if stats.link_read_bytes > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert stats.link_read_bytes > 0 and stats.link_write_bytes > 0
        assert format_client_status(stats) == text
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
