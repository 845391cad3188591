"""Hostile traffic toward a server under test (tests/integration/test_serve_hostile.py).

Run inside the test's client namespace as `python -m helpers.hostile flood|attack ...`; it
prints one JSON line of what it did. Only ever aimed at the address the test gives it (an
address inside a namespace the test created). Every loop is bounded in count and time.

* `flood`: COUNT authentic P_CONTROL_HARD_RESET_CLIENT_V2 (tls-crypt with the test's key,
  so they pass every check an attacker without state can pass), each from a fresh socket
  bound to a random source port, each with a random client session id.
* `attack`: capture the real client's datagrams to the server on the namespace's link
  (AF_PACKET), then send replays of them from the client's own address and port (raw IP
  socket), truncated and bit-flipped copies, random garbage, P_DATA_V2 for random peer-ids,
  and the same replays from other source ports.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import time

from trivpn.controlchannel.packet import ControlPacket, Opcode, serialize_control_packet
from trivpn.controlchannel.wrap import StaticKey, TLSCrypt

ETH_P_ALL = 0x0003
#: Pause after every burst, so the server's socket buffer is not simply overrun (the test
#: is about what the server does with the packets, not about the kernel dropping them).
BURST = 50
BURST_PAUSE = 0.002


def flood(host: str, port: int, count: int, key_text: str, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    wrap = TLSCrypt(StaticKey.from_text(key_text), server=False, timestamp=int(time.time()))
    sent = 0
    for i in range(count):
        sid = rng.randbytes(8)
        pkt = ControlPacket(Opcode.CONTROL_HARD_RESET_CLIENT_V2, 0, sid, (), None, 0, b"")
        data = wrap.wrap(serialize_control_packet(pkt), 0.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("", rng.randrange(1024, 65536)))
            except OSError:
                s.bind(("", 0))
            try:
                s.sendto(data, (host, port))
                sent += 1
            except OSError:
                pass
        if i % BURST == BURST - 1:
            time.sleep(BURST_PAUSE)
    return {"sent": sent}


def capture(iface: str, host: str, port: int, count: int, timeout: float) -> list[tuple[str, int, bytes]]:
    """Up to `count` UDP payloads sent to host:port seen on `iface`: (src, sport, payload)."""
    dst = socket.inet_aton(host)
    out: list[tuple[str, int, bytes]] = []
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        s.bind((iface, 0))
        s.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            try:
                frame = s.recv(65535)
            except TimeoutError:
                continue
            if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17 or ip[16:20] != dst:
                continue
            sport, dport, length = struct.unpack("!HHH", ip[ihl : ihl + 6])
            if dport == port:
                out.append((socket.inet_ntoa(ip[12:16]), sport, bytes(ip[ihl + 8 : ihl + length])))
    return out


def raw_udp(sock: socket.socket, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
    """One UDP datagram with a chosen source address and port (IPv4, no UDP checksum)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    sock.sendto(ip + udp, (dst, 0))  # the kernel fills in the id and the header checksum


def mutations(rng: random.Random, captured: list[bytes], rounds: int) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for _ in range(rounds):
        for p in captured:
            out.append(("replayed", p))
            out.append(("truncated", p[: rng.randrange(0, max(1, len(p)))]))
            i = rng.randrange(len(p)) if p else 0
            out.append(("flipped", p[:i] + bytes([p[i] ^ (1 << rng.randrange(8))]) + p[i + 1 :] if p else b"\x00"))
            out.append(("garbage", rng.randbytes(rng.randrange(0, 1400))))
            out.append(("data-v2", bytes([0x48]) + rng.randrange(1 << 24).to_bytes(3, "big") + rng.randbytes(40)))
    return out


def attack(host: str, port: int, iface: str, seed: int, rounds: int, capture_count: int) -> dict[str, int]:
    rng = random.Random(seed)
    got = capture(iface, host, port, capture_count, 10.0)
    if not got:
        return {"captured": 0}
    src, sport = got[0][0], got[0][1]
    payloads = [p for s, sp, p in got if (s, sp) == (src, sport)]
    sent: dict[str, int] = {"captured": len(payloads)}
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for n, (kind, data) in enumerate(mutations(rng, payloads, rounds)):
            raw_udp(raw, src, sport, host, port, data)  # as if from the real client
            sent[kind] = sent.get(kind, 0) + 1
            if kind == "replayed":
                other.sendto(data, (host, port))  # and from another port: a float attempt
                sent["replayed-elsewhere"] = sent.get("replayed-elsewhere", 0) + 1
            if n % BURST == BURST - 1:
                time.sleep(BURST_PAUSE)
    finally:
        raw.close()
        other.close()
    return sent


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="helpers.hostile")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flood")
    f.add_argument("host")
    f.add_argument("port", type=int)
    f.add_argument("count", type=int)
    f.add_argument("keyfile")
    f.add_argument("--seed", type=int, default=1)
    a = sub.add_parser("attack")
    a.add_argument("host")
    a.add_argument("port", type=int)
    a.add_argument("iface")
    a.add_argument("--seed", type=int, default=2)
    a.add_argument("--rounds", type=int, default=20)
    a.add_argument("--capture", type=int, default=40)
    args = ap.parse_args(argv)
    if args.cmd == "flood":
        with open(args.keyfile) as fh:
            result = flood(args.host, args.port, args.count, fh.read(), args.seed)
    else:
        result = attack(args.host, args.port, args.iface, args.seed, args.rounds, args.capture)
    print(json.dumps(result), flush=True)
    return 0


__all__ = ["attack", "capture", "flood", "main", "mutations", "raw_udp"]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
