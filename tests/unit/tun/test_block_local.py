"""redirect-gateway block-local: which routes NetConfigurator asks the kernel for."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any

import pytest

from trivpn.tun import netconfig
from trivpn.tun.netconfig import NetConfigurator
from trivpn.tun.rtnl import (
    IFA_LOCAL,
    NLMSG_DONE,
    NLMSG_ERROR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
    RtnlSocket,
    _attr,
    encode_message,
    link_body,
    parse_attrs,
    route_body,
)
from trivpn.tun.tunplan import TunConfig

NLM_F_DUMP = 0x300


class DumpKernel:
    """Answers link and route lookups and the two dumps block-local makes."""

    def __init__(self, default_gw: str | None, addrs: list[tuple[str, int, int]]) -> None:
        self.default_gw = default_gw
        self.addrs = addrs  # (address, prefixlen, ifindex)
        self.added: list[tuple[str, str | None, int | None]] = []
        self.pending: list[bytes] = []

    def settimeout(self, _t: float) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, data: bytes) -> int:
        _len, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data)
        out = b""
        if kind == RTM_GETLINK:
            out += encode_message(RTM_NEWLINK, 0, seq, link_body(9, mtu=1500))
        elif kind == RTM_GETROUTE and flags & NLM_F_DUMP:
            if self.default_gw is not None:
                out += encode_message(RTM_NEWROUTE, 2, seq, route_body("0.0.0.0", 0, oif=3, gateway=self.default_gw, new=True))
            out += encode_message(RTM_NEWROUTE, 2, seq, route_body("192.168.7.0", 24, oif=3, new=True))
            self.pending.append(out + encode_message(NLMSG_DONE, 2, seq, b"\0" * 4))
            return len(data)
        elif kind == RTM_GETROUTE:
            out += encode_message(RTM_NEWROUTE, 0, seq, route_body("203.0.113.9", 32, oif=3, gateway=self.default_gw, new=True))
        elif kind == RTM_GETADDR:
            for address, prefixlen, index in self.addrs:
                body = struct.pack("=BBBBi", socket.AF_INET, prefixlen, 0, 0, index)
                body += _attr(IFA_LOCAL, ipaddress.IPv4Address(address).packed)
                out += encode_message(RTM_NEWADDR, 2, seq, body)
            self.pending.append(out + encode_message(NLMSG_DONE, 2, seq, b"\0" * 4))
            return len(data)
        elif kind == 24:  # RTM_NEWROUTE
            attrs = parse_attrs(data[16 + 12 :])
            dst = str(ipaddress.IPv4Address(attrs.get(1, bytes(4))))
            gw = attrs.get(5)
            self.added.append((f"{dst}/{data[17]}", None if gw is None else str(ipaddress.IPv4Address(gw)), struct.unpack("=I", attrs[4])[0]))
        out += encode_message(NLMSG_ERROR, 0, seq, struct.pack("=i", 0) + data[:16])
        self.pending.append(out)
        return len(data)

    def recvmsg(self, _n: int) -> tuple[bytes, list[Any], int, Any]:
        if not self.pending:
            raise TimeoutError("timed out")
        return self.pending.pop(0), [], 0, (0, 0)


def _apply(monkeypatch: pytest.MonkeyPatch, kernel: DumpKernel, servers: list[str]) -> list[tuple[str, str | None, int | None]]:
    monkeypatch.setattr(netconfig, "RtnlSocket", lambda: RtnlSocket(sock=kernel))  # type: ignore[arg-type]
    NetConfigurator("tvpn0").apply(
        TunConfig(
            ipv4=("10.8.0.2", 24, None),
            redirect_gateway=True,
            redirect_via="10.8.0.1",
            server_addresses=servers,
            block_local=True,
        )
    )
    return kernel.added


def test_block_local_routes_the_lan_in_halves_and_keeps_the_gateway(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = DumpKernel("192.168.7.1", [("192.168.7.20", 24, 3), ("10.77.0.5", 16, 3), ("172.16.0.1", 24, 5)])
    added = _apply(monkeypatch, kernel, ["203.0.113.9"])
    assert added == [
        ("203.0.113.9/32", "192.168.7.1", 3),  # the VPN server, pinned
        ("192.168.7.1/32", "192.168.7.1", 3),  # the LAN gateway stays reachable
        ("192.168.7.0/25", "10.8.0.1", 9),
        ("192.168.7.128/25", "10.8.0.1", 9),
        ("10.77.0.0/17", "10.8.0.1", 9),  # another network on the gateway's interface
        ("10.77.128.0/17", "10.8.0.1", 9),
        ("0.0.0.0/1", "10.8.0.1", 9),
        ("128.0.0.0/1", "10.8.0.1", 9),
    ]


def test_block_local_is_skipped_when_the_server_is_on_the_lan(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = DumpKernel("192.168.7.1", [("192.168.7.20", 24, 3)])
    added = _apply(monkeypatch, kernel, ["192.168.7.50"])
    assert [dst for dst, _gw, _oif in added] == ["192.168.7.50/32", "0.0.0.0/1", "128.0.0.0/1"]


def test_block_local_without_a_default_gateway_blocks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = DumpKernel(None, [("192.168.7.20", 24, 3)])
    monkeypatch.setattr(netconfig, "RtnlSocket", lambda: RtnlSocket(sock=kernel))  # type: ignore[arg-type]
    NetConfigurator("tvpn0").apply(TunConfig(redirect_gateway=True, block_local=True))
    assert [dst for dst, _gw, _oif in kernel.added] == ["0.0.0.0/1", "128.0.0.0/1"]
