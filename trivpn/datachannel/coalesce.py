"""Read coalescing for the data-plane threads: under bulk traffic, let packets gather a
moment before reading, so each wake-up carries many, the TUN writes merge and the sends
leave in long GSO runs.

Why: the TUN write offload (`tun.gro`) merges only what one read hands it. A thread that
keeps up with the sender reads one to a few packets per wake-up, so the merged writes stay
small and every wake-up pays its system calls, a poll and the run of the local TCP stack.
NICs solve the same problem with interrupt coalescing (`ethtool -C rx-usecs`): once traffic
is busy, they wait a little before raising the next interrupt. Measured here (namespace
probe, iperf3 -R through the tunnel against Debian's openvpn server, docs/performance.md):
UDP 27-33 packets per merged write instead of 6-10, client CPU per GB -30 %; TCP
600 instead of 360 Mbit/s at 3.4-5.3 instead of 13-14 s/GB.

Policy (pure values; the threads apply them):

* **UDP**: after a batch of at least `udp_min` datagrams (a busy socket: a lone packet
  after an idle wait never qualifies), sleep `udp_linger` seconds before the next read.
* **TCP**: after a read of at least `tcp_busy` bytes, raise the socket's SO_RCVLOWAT to
  `tcp_lowat` (the kernel wakes us once that much waits) and poll with a `tcp_wait_ms`
  timeout; a poll that times out drops SO_RCVLOWAT back to 1 and reads what is there.
* **TUN** (the sending direction, both transports): after a batch of at least `tun_min`
  packets read from the TUN, sleep `tun_linger` seconds before the next read (upload CPU
  per GB -12 % in the same probe: fewer reads that find little, longer GSO sends).

The cost is bounded extra latency while busy (≤ `udp_linger`/`tun_linger`, ≤
`tcp_wait_ms`); an idle tunnel is untouched, as a lone packet after an idle wait never
qualifies. `trivpn connect --low-latency` and TRIVPN_RX_COALESCE=0 turn it off.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["RX_COALESCE_ENV", "RxCoalesce", "default_rx_coalesce", "linger"]

#: "0" turns receive coalescing off (same-run benchmarks, latency-first users)
RX_COALESCE_ENV = "TRIVPN_RX_COALESCE"


@dataclass(frozen=True, slots=True)
class RxCoalesce:
    """When and how long the receiving thread lets packets gather (see module docstring)."""

    udp_min: int = 8
    udp_linger: float = 0.0003
    tcp_busy: int = 16384
    tcp_lowat: int = 65536
    tcp_wait_ms: int = 1
    tun_min: int = 8
    tun_linger: float = 0.0003


OFF = RxCoalesce(udp_min=1 << 30, udp_linger=0.0, tcp_busy=1 << 30, tcp_lowat=1,
                 tun_min=1 << 30, tun_linger=0.0)


def default_rx_coalesce(*, low_latency: bool = False) -> RxCoalesce:
    """The policy a session uses: on, unless low-latency mode or TRIVPN_RX_COALESCE=0."""
    if low_latency or os.environ.get(RX_COALESCE_ENV, "1") == "0":
        return OFF
    return RxCoalesce()


def linger(seconds: float) -> None:
    """The threads' bounded wait (a module function so tests can count the calls)."""
    time.sleep(seconds)
