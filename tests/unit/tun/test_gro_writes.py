"""`LinuxTun`'s writes on a TUN with a virtio header, over a SOCK_SEQPACKET socket pair
(packet boundaries kept, like a TUN fd): merged writes, a kernel that refuses one, and
resuming after EAGAIN with packets that are dropped."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from helpers.tcpseg import seg

from trivpn.tun import gro
from trivpn.tun.linux import LinuxTun


@pytest.fixture
def pair() -> Iterator[tuple[LinuxTun, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    tun = LinuxTun(ours.detach(), "fake0")
    tun.vnet_hdr = gro.VNET_HDR_LEN  # as if opened with IFF_VNET_HDR
    theirs.settimeout(5)
    try:
        yield tun, theirs
    finally:
        tun.close()
        theirs.close()


def _drain(peer: socket.socket) -> list[bytes]:
    peer.setblocking(False)
    got = []
    while True:
        try:
            got.append(peer.recv(1 << 17))
        except BlockingIOError:
            return got


def test_a_run_of_segments_is_one_write(pair: tuple[LinuxTun, socket.socket]) -> None:
    tun, peer = pair
    packets = [seg(i * 1000, bytes([i]) * 1000) for i in range(5)]
    assert tun.write_nowait(packets) == 5
    got = _drain(peer)
    assert len(got) == 1 and got[0][1] == gro.GSO_TCPV4
    assert tun.stats.packets_written == 5 and tun.stats.gso_writes == 1


def test_a_refused_merged_write_is_sent_again_one_by_one(
    pair: tuple[LinuxTun, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    tun, peer = pair
    real = os.writev

    def refuse_merged(fd: int, buffers: Sequence[Any]) -> int:
        if len(buffers) > 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, buffers)

    monkeypatch.setattr(os, "writev", refuse_merged)
    packets = [seg(i * 1000, bytes([i]) * 1000) for i in range(5)]
    assert tun.write_nowait(packets) == 5
    got = _drain(peer)
    assert [g[gro.VNET_HDR_LEN:] for g in got] == packets  # nothing lost, order kept
    assert all(g[: gro.VNET_HDR_LEN] == bytes(gro.VNET_HDR_LEN) for g in got)
    assert tun.merge is False and tun.stats.packets_written == 5
    # later batches are not merged any more
    assert tun.write_nowait(packets) == 5
    assert len(_drain(peer)) == 5


def test_resuming_after_eagain_counts_each_dropped_packet_once(
    pair: tuple[LinuxTun, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    tun, peer = pair
    real = os.writev
    calls = {"n": 0}

    def full_after_two(fd: int, buffers: Sequence[Any]) -> int:
        calls["n"] += 1
        if calls["n"] == 3:
            raise BlockingIOError(errno.EAGAIN, "full")
        return real(fd, buffers)

    monkeypatch.setattr(os, "writev", full_after_two)
    udp = bytearray(seg(0, b"u" * 50))
    udp[9] = 17  # not TCP: each packet is its own write
    packets = [bytes(udp), b"", bytes(udp), bytes(udp), b"", bytes(udp)]
    i = tun.write_nowait(packets)
    assert i == 3  # two written, the empty one between them dropped; the third hit EAGAIN
    assert tun.write_nowait(packets, i) == len(packets)
    assert tun.stats.dropped_oversize == 2  # each empty packet counted once
    assert tun.stats.packets_written == 4 and len(_drain(peer)) == 4
