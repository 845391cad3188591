"""Hand-built TCP segments over IPv4/IPv6 for the TUN write-offload tests."""

from __future__ import annotations

import socket
import struct

V4_SRC, V4_DST = socket.inet_aton("10.8.0.1"), socket.inet_aton("10.8.0.2")
V6_SRC = socket.inet_pton(socket.AF_INET6, "fd00::1")
V6_DST = socket.inet_pton(socket.AF_INET6, "fd00::2")


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def seg(seq: int, payload: bytes, *, flags: int = 0x10, v6: bool = False, sport: int = 1000,
        ack: int = 7, opts: bytes = b"", ipid: int = 1, frag: int = 0x4000, tos: int = 0) -> bytes:
    thl = 20 + len(opts)
    tcp = struct.pack("!HHIIBBHHH", sport, 2000, seq & 0xFFFFFFFF, ack, (thl // 4) << 4, flags,
                      500, 0, 0) + opts + payload
    if v6:
        return struct.pack("!IHBB", (6 << 28) | (tos << 20), len(tcp), 6, 64) + V6_SRC + V6_DST + tcp
    ip = struct.pack("!BBHHHBBH", 0x45, tos, 20 + len(tcp), ipid, frag, 64, 6, 0) + V4_SRC + V4_DST
    ip = ip[:10] + struct.pack("!H", ~csum(ip) & 0xFFFF) + ip[12:]
    return ip + tcp
