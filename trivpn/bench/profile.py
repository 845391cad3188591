"""`python -m trivpn.bench profile`: what one data packet costs, stage by stage.

Why: the VPN benchmark gives end-to-end figures on a machine shared with the server and
iperf3; it cannot say where a client's microseconds go. This profile times each stage of the
data path alone, in one process, on loopback, and reports nanoseconds **per packet** for
batches of `--batch` packets of `--size` bytes:

* **CPU ns/packet** (the calling thread's, or the data thread's, `CLOCK_THREAD_CPUTIME`):
  robust on a busy machine, as other processes' work is not counted; the figure to compare.
* **wall ns/packet**: includes waiting for the CPU and the other thread; noisy when shared.

Stages (each the median of `--repeat` timed batches):

* `aead-seal` / `aead-open`: the `cryptography` AEAD call alone (the floor of crypto).
* `encrypt` / `decrypt`: `Encryptor.encrypt` / `Decryptor.decrypt` (header, packet id,
  framing, replay window, counters around the AEAD call); minus the row above = Python.
* `udp-send` / `udp-recv`: `UDPTransport.send_nowait` (GSO runs) / `recv_nowait` on a
  connected loopback UDP socket pair.
* `tun-write` / `tun-read`: `LinuxTun.write_nowait` / `read_nowait` over an AF_UNIX
  datagram socket pair standing in for the TUN fd (same system calls, not the TUN driver's
  cost: a real TUN write also runs the stack's input path).
* `loop-up` / `loop-down`: the real data plane (`fastpath.ThreadPlane` in its default
  layout, one thread that hands bulk input from the socket to a second; with
  `--other-layout` also one thread per direction, rows tagged `2t`; TRIVPN_DATA_THREADS=1
  makes the default one thread that never hands over) over those fakes, fed in bursts of `--batch` by a child process (so the feeder never holds our GIL):
  CPU of the data thread per packet (poll, system calls, crypto, Python); wall is the
  feeder's, from its first send to the burst's last arrival.
* `loop-both`: a burst each way at the same time; per packet of the 2 × `--batch`. Its
  wall against the two loops' walls shows what running the directions at once buys (two
  threads share the GIL: only system calls and the AEAD overlap).
* `rtt` (µs, wall): a ping: into the TUN, through the down thread, answered at once by
  the feeder with a pre-sealed reply, through the up thread, out of the TUN; hot and cold.
  With `--low-latency` the cold series runs again with the threads' warm-up on (`lowlat`),
  and the data threads' CPU during each cold series is reported (what the warm-up costs).
* `lone-up` / `lone-down` (µs, wall): one packet at a time through the data thread, from
  the feeder's send to its arrival on the other side: back to back (`hot`) and after an
  idle gap of `--gap` ms (`cold`), next to `relay` — the same hop, same feeder, through a
  minimal plain thread (poll + read + write, no crypto): the floor for a Python thread here.

Derived rows (`python-*`) subtract the AEAD floor from the codec stages and the stage sums
from the loops. Output: a table, and JSON with `--json PATH`. Loopback only; every loop is
bounded in count, every wait in time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, field
from pathlib import Path
from typing import Any

from trivpn.records import dataclass

#: Bound on any single wait in the profile (a lost packet must not hang it).
WAIT = 5.0
_BUF = 8 * 1024 * 1024


@dataclass(slots=True)
class Options:
    batch: int = 64
    size: int = 1400
    repeat: int = 200
    lone: int = 200
    gap_ms: float = 10.0
    cipher: str = "AES-256-GCM"
    #: also run the lone packets with the data threads' low-latency warm-up (`--low-latency`)
    low_latency: bool = False
    #: also run the loops with the other data-plane layout (`--other-layout`)
    other_layout: bool = False


@dataclass(slots=True)
class Row:
    stage: str
    cpu_ns: float | None  # per packet
    wall_ns: float | None  # per packet
    note: str = ""


@dataclass(slots=True)
class Report:
    options: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    #: lone-packet latencies (µs, p50 / p90) per kind
    lone_us: dict[str, dict[str, float]] = field(default_factory=dict)
    #: CPU of both data threads while the cold lone packets ran, in % of one core
    cold_cpu_pct: dict[str, float] = field(default_factory=dict)

    def row(self, stage: str) -> Row | None:
        return next((r for r in self.rows if r.stage == stage), None)


# ---------------------------------------------------------------------------------------
# fixtures


def make_pair(cipher: str) -> tuple[Any, Any]:
    """A client and a server data channel under one random key."""
    from trivpn.datachannel.core import DataChannel

    key2 = os.urandom(256)
    client = DataChannel(cipher=cipher, is_server=False, peer_id=1)
    server = DataChannel(cipher=cipher, is_server=True, peer_id=1)
    client.install_key(0, key2, 0.0)
    server.install_key(0, key2, 0.0)
    return client, server


def plain_packets(size: int, n: int) -> list[bytes]:
    """`n` distinct IPv4-looking packets of `size` bytes."""
    body = os.urandom(max(size - 4, 0))
    return [(b"\x45\x00" + (i & 0xFFFF).to_bytes(2, "big") + body)[:size] for i in range(n)]


def udp_pair() -> tuple[socket.socket, socket.socket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUF)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUF)
        s.bind(("127.0.0.1", 0))
    a.connect(b.getsockname())
    b.connect(a.getsockname())
    a.setblocking(False)
    return a, b


def tun_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUF)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUF)
    a.setblocking(False)
    return a, b


def transport_on(sock: socket.socket) -> Any:
    from trivpn.networkio.transport import Endpoint, UDPTransport

    host, port = sock.getpeername()
    return UDPTransport(sock, Endpoint(host, port, "udp", socket.AF_INET, (host, port)))


def drain(sock: socket.socket, n: int) -> int:
    """Read `n` datagrams (blocking, bounded by WAIT each); how many arrived."""
    sock.settimeout(WAIT)
    got = 0
    try:
        while got < n:
            sock.recv(65536)
            got += 1
    except TimeoutError:
        pass
    return got


def median_per_packet(samples: list[tuple[int, int]], per: int) -> tuple[float, float]:
    cpu = statistics.median(s[0] for s in samples) / per
    wall = statistics.median(s[1] for s in samples) / per
    return cpu, wall


def _time(fn: Callable[[int], None], repeat: int, per: int) -> tuple[float, float]:
    """Median (CPU, wall) ns per packet of `fn(i)` over `repeat` calls (setup outside)."""
    samples: list[tuple[int, int]] = []
    for i in range(repeat):
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        fn(i)
        samples.append((time.thread_time_ns() - c0, time.perf_counter_ns() - w0))
    return median_per_packet(samples, per)


# ---------------------------------------------------------------------------------------
# stages in the calling thread


def codec_stages(opt: Options, report: Report) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

    b, rep = opt.batch, opt.repeat
    plain = plain_packets(opt.size, b)
    aead = (ChaCha20Poly1305 if "CHACHA" in opt.cipher else AESGCM)(os.urandom(32))
    nonce, ad = os.urandom(12), os.urandom(8)
    sealed = [aead.encrypt(nonce, p, ad) for p in plain]

    def seal(_i: int) -> None:
        enc = aead.encrypt
        for p in plain:
            enc(nonce, p, ad)

    def open_(_i: int) -> None:
        dec = aead.decrypt
        for c in sealed:
            dec(nonce, c, ad)

    cpu, wall = _time(seal, rep, b)
    report.rows.append(Row("aead-seal", cpu, wall, "cryptography AEAD encrypt alone"))
    cpu, wall = _time(open_, rep, b)
    report.rows.append(Row("aead-open", cpu, wall, "cryptography AEAD decrypt alone"))

    client, server = make_pair(opt.cipher)
    cpu, wall = _time(lambda _i: client.tx.encrypt(plain, 0.0), rep, b)
    report.rows.append(Row("encrypt", cpu, wall, "Encryptor.encrypt (header, id, AEAD)"))
    wire = [server.tx.encrypt(plain, 0.0) for _ in range(rep)]
    cpu, wall = _time(lambda i: client.rx.decrypt(wire[i], 0.0), rep, b)
    if client.rx.stats.rx_packets != rep * b:
        raise RuntimeError("profile: decrypt dropped packets")
    report.rows.append(Row("decrypt", cpu, wall, "Decryptor.decrypt (replay, AEAD, counters)"))


def io_stages(opt: Options, report: Report) -> None:
    from trivpn.tun.linux import LinuxTun

    b, rep = opt.batch, max(opt.repeat // 4, 3)
    client, server = make_pair(opt.cipher)
    plain = plain_packets(opt.size, b)
    wire = client.tx.encrypt(plain, 0.0)

    ours, peer = udp_pair()
    tun_ours, tun_peer = tun_pair()
    transport = transport_on(ours)
    tun = LinuxTun(tun_ours.fileno(), "fake0", mtu=max(1500, opt.size))
    try:
        samples: list[tuple[int, int]] = []
        for _ in range(rep):
            c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            sent = transport.send_nowait(wire)
            samples.append((time.thread_time_ns() - c0, time.perf_counter_ns() - w0))
            if sent != b or drain(peer, b) != b:
                raise RuntimeError("profile: udp-send lost packets")
        cpu, wall = median_per_packet(samples, b)
        report.rows.append(Row("udp-send", cpu, wall, "UDPTransport.send_nowait (GSO), loopback"))

        samples = []
        for _ in range(rep):
            for w in wire:
                peer.send(w)
            c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            got = transport.recv_nowait(b)
            samples.append((time.thread_time_ns() - c0, time.perf_counter_ns() - w0))
            if len(got) != b:
                raise RuntimeError("profile: udp-recv lost packets")
        cpu, wall = median_per_packet(samples, b)
        report.rows.append(Row("udp-recv", cpu, wall, "UDPTransport.recv_nowait, loopback"))

        samples = []
        for _ in range(rep):
            c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            done = tun.write_nowait(plain)
            samples.append((time.thread_time_ns() - c0, time.perf_counter_ns() - w0))
            if done != b or drain(tun_peer, b) != b:
                raise RuntimeError("profile: tun-write lost packets")
        cpu, wall = median_per_packet(samples, b)
        report.rows.append(Row("tun-write", cpu, wall, "LinuxTun.write_nowait, AF_UNIX stand-in"))

        samples = []
        for _ in range(rep):
            for p in plain:
                tun_peer.send(p)
            c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
            batch = tun.read_nowait(b)
            samples.append((time.thread_time_ns() - c0, time.perf_counter_ns() - w0))
            if batch is None or len(batch) != b:
                raise RuntimeError("profile: tun-read lost packets")
        cpu, wall = median_per_packet(samples, b)
        report.rows.append(Row("tun-read", cpu, wall, "LinuxTun.read_nowait, AF_UNIX stand-in"))
    finally:
        tun.close()  # closes tun_ours' fd
        tun_ours.detach()
        for s in (ours, peer, tun_peer):
            s.close()


# ---------------------------------------------------------------------------------------
# report


def derive(report: Report) -> None:
    """Python overhead rows: codec minus AEAD; loop minus the stages it is made of."""

    def cpu(stage: str) -> float | None:
        r = report.row(stage)
        return None if r is None else r.cpu_ns

    def minus(name: str, total: str, parts: tuple[str, ...], note: str) -> None:
        t = cpu(total)
        ps = [cpu(p) for p in parts]
        if t is None or any(p is None for p in ps):
            return
        report.rows.append(Row(name, t - sum(p for p in ps if p is not None), None, note))

    minus("python-encrypt", "encrypt", ("aead-seal",), "encrypt − aead-seal")
    minus("python-decrypt", "decrypt", ("aead-open",), "decrypt − aead-open")
    minus("overhead-up", "loop-up", ("udp-recv", "decrypt", "tun-write"),
          "loop-up − (udp-recv + decrypt + tun-write): poll, run loop, GIL")
    minus("overhead-down", "loop-down", ("tun-read", "encrypt", "udp-send"),
          "loop-down − (tun-read + encrypt + udp-send): poll, run loop, GIL")


def format_report(report: Report) -> str:
    o = report.options
    lines = [
        f"per-packet cost, {o['cipher']}, {o['size']}-byte packets, batches of {o['batch']}",
        "",
        f"{'stage':16s} {'CPU ns/pkt':>11s} {'wall ns/pkt':>12s}  what",
    ]
    for r in report.rows:
        cpu = "—" if r.cpu_ns is None else f"{r.cpu_ns:.0f}"
        wall = "—" if r.wall_ns is None else f"{r.wall_ns:.0f}"
        lines.append(f"{r.stage:16s} {cpu:>11s} {wall:>12s}  {r.note}")
    if report.lone_us:
        lines += ["", f"one packet at a time (µs, wall; cold = after {o['gap_ms']:g} ms idle)",
                  f"{'hop':20s} {'p50':>8s} {'p90':>8s}"]
        for name, v in report.lone_us.items():
            lines.append(f"{name:20s} {v['p50']:8.1f} {v['p90']:8.1f}")
        for name, pct in report.cold_cpu_pct.items():
            lines.append(f"data-plane CPU during the cold packets, {name}: {pct:.2f} % of a core")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> tuple[Options, bool, Path | None, set[str]]:
    p = argparse.ArgumentParser(prog="python -m trivpn.bench profile", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few batches only (a smoke run, ≈ 1 s)")
    p.add_argument("--batch", type=int, default=64, help="packets per batch (1..64, default 64)")
    p.add_argument("--size", type=int, default=1400, help="IP packet size in bytes (default 1400)")
    p.add_argument("--repeat", type=int, default=200, help="timed batches per codec stage")
    p.add_argument("--lone", type=int, default=200, help="lone packets per latency figure")
    p.add_argument("--gap", type=float, default=10.0, help="idle gap (ms) before a cold packet")
    p.add_argument("--cipher", default="AES-256-GCM", choices=("AES-256-GCM", "CHACHA20-POLY1305"))
    p.add_argument("--only", default="codec,io,loop,relay",
                   help="comma-separated parts: codec, io, loop, relay (default all)")
    p.add_argument("--low-latency", action="store_true",
                   help="also time the lone packets with the data threads' low-latency warm-up")
    p.add_argument("--other-layout", action="store_true",
                   help="also run the loops with one data-plane thread per direction: rows "
                   "tagged 2t")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    if not 1 <= a.batch <= 64:
        p.error("--batch must be 1..64")
    if not 20 <= a.size <= 1500:
        p.error("--size must be 20..1500")
    if not 1 <= a.repeat <= 100_000 or not 1 <= a.lone <= 100_000:
        p.error("--repeat and --lone must be 1..100000")
    if not 0 <= a.gap <= 1000:
        p.error("--gap must be 0..1000 ms")
    parts = {s.strip() for s in a.only.split(",") if s.strip()}
    if not parts or parts - {"codec", "io", "loop", "relay"}:
        p.error("--only takes a subset of codec,io,loop,relay")
    repeat, lone = (8, 5) if a.quick else (a.repeat, a.lone)
    opt = Options(batch=a.batch, size=a.size, repeat=repeat, lone=lone, gap_ms=a.gap,
                  cipher=a.cipher, low_latency=a.low_latency, other_layout=a.other_layout)
    return opt, a.quick, a.json, parts


def run(opt: Options, parts: set[str]) -> Report:
    report = Report(options=asdict(opt))
    if "codec" in parts:
        codec_stages(opt, report)
    if "io" in parts:
        io_stages(opt, report)
    if "loop" in parts or "relay" in parts:
        from trivpn.bench.profileloops import LOW_LATENCY_WARM_FOR, loop_stages, relay_floor
    if "loop" in parts:
        loop_stages(opt, report)
        if opt.low_latency:
            loop_stages(opt, report, warm_for=LOW_LATENCY_WARM_FOR)
        if opt.other_layout:
            loop_stages(opt, report, other_layout=True)
    if "relay" in parts:
        relay_floor(opt, report)
    derive(report)
    return report


def main(argv: list[str] | None = None) -> int:
    opt, _quick, json_path, parts = parse_args(argv)
    report = run(opt, parts)
    print(format_report(report))
    if json_path is not None:
        from trivpn.bench.machine import describe_machine

        doc = {"machine": describe_machine(), **asdict(report)}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
