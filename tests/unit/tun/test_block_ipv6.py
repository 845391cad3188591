"""block-ipv6: IPv6 read from the TUN is answered with ICMPv6 "no route" and never sent on."""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct

import pytest

from trivpn.tun.ip import (
    ICMP6_ERROR_MAX,
    _pseudo_header_sum,
    build_echo_request,
    icmp6_no_route,
    internet_checksum,
)
from trivpn.tun.linux import LinuxTun

SRC, DST = "fd00:202::1000", "2001:db8::1"


def test_answer_layout_and_checksum() -> None:
    request = build_echo_request(SRC, DST, 7, 1, b"x" * 32)
    answer = icmp6_no_route(request, "fe80::7")
    assert answer is not None
    assert answer[0] >> 4 == 6 and answer[6] == 58  # IPv6 carrying ICMPv6
    assert answer[8:24] == ipaddress.IPv6Address("fe80::7").packed
    assert answer[24:40] == ipaddress.IPv6Address(SRC).packed  # back to the sender
    length = struct.unpack("!H", answer[4:6])[0]
    body = answer[40:]
    assert length == len(body) == 8 + len(request)
    assert body[0:2] == b"\x01\x00"  # destination unreachable, no route
    assert body[8:] == request  # the offending packet, quoted
    assert internet_checksum(body, _pseudo_header_sum(answer[8:24], answer[24:40], length, 58)) == 0


def test_answer_fits_the_minimum_mtu() -> None:
    big = build_echo_request(SRC, DST, 7, 1, b"y" * 1400)
    answer = icmp6_no_route(big, "fe80::7")
    assert answer is not None and len(answer) == ICMP6_ERROR_MAX


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        build_echo_request("10.0.0.1", "10.0.0.2", 1, 1),  # IPv4
        build_echo_request(SRC, DST, 1, 1)[:30],  # truncated
        build_echo_request("::", DST, 1, 1),  # unspecified source
        build_echo_request("ff02::1", DST, 1, 1),  # multicast source
        build_echo_request("fe80::1", "ff02::2", 1, 1),  # to a group (a router solicitation's way)
    ],
)
def test_no_answer_where_rfc_4443_forbids_one(packet: bytes) -> None:
    assert icmp6_no_route(packet, "fe80::7") is None


def test_no_answer_to_an_icmpv6_error() -> None:
    error = icmp6_no_route(build_echo_request(SRC, DST, 1, 1), "fe80::7")
    assert error is not None
    assert icmp6_no_route(error, "fe80::7") is None


def test_linux_tun_answers_ipv6_and_passes_ipv4() -> None:
    """A SOCK_SEQPACKET pair stands in for the TUN fd: one read, one packet, as a TUN."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tun = LinuxTun(ours.detach(), "tvtest")
    try:
        v4 = build_echo_request("10.0.0.1", "10.0.0.2", 1, 1)
        v6 = build_echo_request(SRC, DST, 2, 2)
        kernel.send(v6)
        kernel.send(v4)
        assert tun.read_nowait() == [v6, v4]  # off by default
        tun.ipv6_answer = functools.partial(icmp6_no_route, source="fe80::7")
        kernel.send(v6)
        kernel.send(v4)
        assert tun.read_nowait() == [v4]
        kernel.settimeout(1)
        answer = kernel.recv(2000)
        assert answer == icmp6_no_route(v6, "fe80::7")
    finally:
        tun.close()
        kernel.close()
