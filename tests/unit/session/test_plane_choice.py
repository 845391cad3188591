"""Which data plane a client session picks: threads for UDP and direct TCP over a kernel TUN,
trio tasks with `--no-data-threads`, a proxy, or a userspace TUN."""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterator

import pytest
from helpers.profiles import make_profile

from trivpn.datachannel.fastpath import FastPathIO
from trivpn.datachannel.tcpfast import TCPPathIO
from trivpn.networkio.proxy import ProxiedTCPTransport
from trivpn.networkio.transport import Endpoint, TCPTransport, Transport, UDPTransport
from trivpn.session.clientstack import ClientSession
from trivpn.session.config import SessionConfig
from trivpn.session.reconnect import candidates
from trivpn.tun.linux import LinuxTun

EP_TCP = Endpoint("127.0.0.1", 1194, "tcp", socket.AF_INET, ("127.0.0.1", 1194))
EP_UDP = Endpoint("127.0.0.1", 1194, "udp", socket.AF_INET, ("127.0.0.1", 1194))


@pytest.fixture
def tun() -> Iterator[LinuxTun]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    device = LinuxTun(os.dup(b.fileno()), "fake0")
    b.close()
    yield device
    device.close()
    a.close()


def _session(transport: Transport, device: LinuxTun | None, *, threads: bool = True) -> ClientSession:
    cfg = SessionConfig.from_profile(make_profile(), data_threads=threads)
    cand = candidates(cfg.connections, random.Random(0))[0]
    return ClientSession(cfg, cand, transport, device, lambda: None)


def _stream() -> socket.socket:
    s, peer = socket.socketpair()
    peer.close()
    s.setblocking(False)
    return s


def test_direct_tcp_over_a_kernel_tun_runs_the_tcp_threads(tun: LinuxTun) -> None:
    transport = TCPTransport(_stream(), EP_TCP)
    try:
        assert isinstance(_session(transport, tun).fast, TCPPathIO)
        assert _session(transport, tun, threads=False).fast is None
        assert _session(transport, None).fast is None
    finally:
        transport.close()


def test_a_proxied_stream_keeps_the_trio_plane(tun: LinuxTun) -> None:
    transport = ProxiedTCPTransport(_stream(), EP_TCP, kind="http", target=("vpn.example", 1194))
    try:
        assert _session(transport, tun).fast is None
    finally:
        transport.close()


def test_udp_still_runs_the_udp_threads(tun: LinuxTun) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    transport = UDPTransport(sock, EP_UDP)
    try:
        assert isinstance(_session(transport, tun).fast, FastPathIO)
    finally:
        transport.close()
