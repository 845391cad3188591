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

* **UDP**: after a batch of at least `udp_min` datagrams holding at least `udp_bytes`
  (a busy socket carrying data: a lone packet after an idle wait never qualifies, nor does
  a run of ACKs, which would not merge), sleep `udp_linger` seconds before the next read —
  unless the read was full (`udp_linger_after`): then more is queued and waiting would only
  cap the rate, at one full read per linger. Measured on a 2-core Intel Xeon (2026-12-02,
  docs/performance.md): lingering after full reads too held the download at 1.03 Gbit/s
  with 41 % of the machine idle; without that, 1.52-1.59 Gbit/s at less CPU per GB.
* **TCP**: after a read of at least `tcp_busy` bytes, raise the socket's SO_RCVLOWAT to
  `tcp_lowat` (the kernel wakes us once that much waits) and poll with a `tcp_wait_ms`
  timeout; a poll that times out drops SO_RCVLOWAT back to 1 and reads what is there.
* **TCP, an upload's returning ACKs** (the one-thread layouts, `tcpfast`'s `both`): after
  a busy batch from the TUN (`tun_min` packets holding `tun_bytes`: we are uploading),
  raise SO_RCVLOWAT to `tcp_ack_lowat` (`tcp_ack_lowat_after`) and wait at most
  `tcp_wait_ms`; a wait that times out drops it back to 1 and reads what is there. During
  an upload the peer's packets are mostly the inner TCP's ACKs, ≈ 80 bytes each on the
  stream, and a peer without Nagle (`trivpn serve`, OpenVPN's `tcp-nodelay`) sends each as
  its own segment: waking at the first byte, the thread woke, read, decrypted and polled
  once per ACK (48 117 single-ACK reads in one `bench vpn` round, 957 with the mark;
  upload CPU per GB −7 to −38 % in same-run A/Bs, docs/performance.md).
* **TUN** (the sending direction, both transports and every thread layout; opt-in,
  TRIVPN_RX_COALESCE=udp,tcp,tun): after a busy batch read from the TUN (`tun_min`
  packets holding `tun_bytes`) that did not fill the read, sleep `tun_linger` seconds
  (`tun_linger_after`). Lingering after every busy batch saved upload CPU (-12 % per GB in
  the probe) but cost 10-15 % upload throughput at af20dbe; with the full-read rule, two
  same-run A/Bs on a 2-core AMD EPYC (2026-12-02) disagreed (upload CPU per GB -8 to -10 %
  in one, +0 to +6 % in the other, throughput within the spread), so it stays off.

The cost is bounded extra latency while busy (≤ `udp_linger`/`tun_linger`, ≤
`tcp_wait_ms`); an idle tunnel is untouched, as a lone packet after an idle wait never
qualifies. `trivpn connect --low-latency` and TRIVPN_RX_COALESCE=0 turn it off;
TRIVPN_RX_COALESCE=udp,tcp,tun names the parts to use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from trivpn.errors import ConfigError
from trivpn.records import dataclass

__all__ = ["RX_COALESCE_ENV", "RxCoalesce", "default_rx_coalesce", "linger", "tcp_ack_lowat_after",
           "tun_linger_after", "udp_linger_after"]

#: "0" turns receive coalescing off (same-run benchmarks, latency-first users)
RX_COALESCE_ENV = "TRIVPN_RX_COALESCE"
#: ... and a comma-separated list of these keeps only the parts named
RX_PARTS = frozenset({"udp", "tcp", "tun"})


@dataclass(frozen=True, slots=True)
class RxCoalesce:
    """When and how long the receiving thread lets packets gather (see module docstring)."""

    udp_min: int = 8
    udp_bytes: int = 8192  # ... holding this much: data, not a run of ACKs
    udp_linger: float = 0.0003
    tcp_busy: int = 16384
    tcp_lowat: int = 65536
    tcp_wait_ms: int = 1
    tcp_ack_lowat: int = 1024  # 0: off
    tun_min: int = 8
    tun_bytes: int = 8192  # ... holding this much: data, not a run of ACKs
    tun_linger: float = 0.0  # measured: does not pay by default; TRIVPN_RX_COALESCE=udp,tcp,tun


TUN_LINGER = 0.0003  # the TUN side's wait when it is asked for

OFF = RxCoalesce(udp_min=1 << 30, udp_linger=0.0, tcp_busy=1 << 30, tcp_lowat=1,
                 tcp_ack_lowat=0, tun_min=1 << 30, tun_linger=0.0)


def default_rx_coalesce(*, low_latency: bool = False) -> RxCoalesce:
    """The policy a session uses: on, unless low-latency mode or TRIVPN_RX_COALESCE=0;
    TRIVPN_RX_COALESCE may also name the parts to keep (comma-separated: udp, tcp, tun).
    Any other value is a `ConfigError`: a mistyped knob must not silently turn parts off."""
    value = os.environ.get(RX_COALESCE_ENV, "1").strip().lower()
    if low_latency or value == "0":
        return OFF
    on = RxCoalesce()
    if value == "1":
        return on
    parts = {p.strip() for p in value.split(",")} - {""}
    if not parts or parts - RX_PARTS:
        raise ConfigError(f"{RX_COALESCE_ENV}={value!r}: expected 0, 1, or the parts to keep "
                          f"from {', '.join(sorted(RX_PARTS))}, comma-separated")
    return RxCoalesce(
        udp_min=on.udp_min if "udp" in parts else OFF.udp_min,
        udp_linger=on.udp_linger if "udp" in parts else 0.0,
        tcp_busy=on.tcp_busy if "tcp" in parts else OFF.tcp_busy,
        tcp_lowat=on.tcp_lowat if "tcp" in parts else 1,
        tcp_ack_lowat=on.tcp_ack_lowat if "tcp" in parts else 0,
        tun_min=on.tun_min,  # also what a busy TUN batch is for `tcp_ack_lowat_after`
        tun_linger=TUN_LINGER if "tun" in parts else 0.0,
    )


def udp_linger_after(rx: RxCoalesce, batch: Sequence[bytes], full: int) -> float:
    """Seconds to wait before the next socket read after `batch` (0: read on at once).

    Only a busy batch that did not fill the read (`full` datagrams) waits: a full read
    means the socket holds more, and a wait after each would cap the rate at `full`
    datagrams per linger (a paced sender never lets the queue build up to that)."""
    return _linger_after(rx.udp_linger, rx.udp_min, rx.udp_bytes, batch, full)


def tun_linger_after(rx: RxCoalesce, batch: Sequence[bytes], full: int) -> float:
    """Seconds to wait before the next TUN read after `batch` (0: read on at once): the
    rule of `udp_linger_after` for the sending side (opt-in, `tun_linger`)."""
    return _linger_after(rx.tun_linger, rx.tun_min, rx.tun_bytes, batch, full)


def tcp_ack_lowat_after(rx: RxCoalesce, batch: Sequence[bytes]) -> int:
    """The SO_RCVLOWAT to wait with after sending `batch` from the TUN (0: leave it): a busy
    batch means an upload, whose returning ACKs may gather before the next read."""
    if not rx.tcp_ack_lowat or len(batch) < rx.tun_min or sum(map(len, batch)) < rx.tun_bytes:
        return 0
    return rx.tcp_ack_lowat


def _linger_after(wait: float, at_least: int, at_least_bytes: int, batch: Sequence[bytes],
                  full: int) -> float:
    n = len(batch)
    if not wait or n < at_least or n >= full or sum(map(len, batch)) < at_least_bytes:
        return 0.0
    return wait


def linger(seconds: float) -> None:
    """The threads' bounded wait (a module function so tests can count the calls)."""
    time.sleep(seconds)
