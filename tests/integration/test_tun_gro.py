"""The TUN write offload (`trivpn.tun.gro`) against the real kernel.

The test runs this file as a script in a fresh network namespace (`unshare --net`, gone
when the script exits). The script opens a TUN with `open_tun` (IFF_VNET_HDR), gives it
10.77.0.1/24 and fd77::1/64, listens on both, and plays a remote TCP peer by hand through
the TUN: SYN, the kernel's SYN-ACK, ACK, then a stream of random data segments written by
`LinuxTun.write_nowait` in batches (so they are coalesced), with a few packets mixed in
that must not merge (a segment out of order, a pure ACK, a PSH). The kernel's socket must
receive every byte in order, and the kernel must have sent far fewer ACKs than segments
(one per merged write, not one per two segments). One JSON line reports the figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.require import require_root
from helpers.tcpseg import csum

REPO_ROOT = Path(__file__).resolve().parents[2]
#: for this file run as a script: trivpn, and tests/ for `helpers`
SCRIPT_PATH = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])
SEGMENTS = 400
MSS = 1200


# -- the script side (runs inside the namespace) -------------------------------------------


class Peer:
    """A remote TCP endpoint written by hand, one family."""

    def __init__(self, v6: bool, local: str, remote: str, lport: int, rport: int) -> None:
        self.v6 = v6
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        self.src = socket.inet_pton(fam, remote)
        self.dst = socket.inet_pton(fam, local)
        self.sport, self.dport = rport, lport
        self.seq = 1000
        self.ack = 0
        self.ipid = 1

    def packet(self, flags: int, payload: bytes = b"", seq: int | None = None,
               opts: bytes = b"") -> bytes:
        seq = self.seq if seq is None else seq
        thl = 20 + len(opts)
        tcp = struct.pack("!HHIIBBHHH", self.sport, self.dport, seq, self.ack, (thl // 4) << 4,
                          flags, 65000, 0, 0) + opts
        length = thl + len(payload)
        if self.v6:
            pseudo = self.src + self.dst + struct.pack("!IxxxB", length, 6)
        else:
            pseudo = self.src + self.dst + struct.pack("!xBH", 6, length)
        check = ~csum(pseudo + tcp + payload) & 0xFFFF
        tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
        if self.v6:
            ip = struct.pack("!IHBB", 6 << 28, length, 6, 64) + self.src + self.dst
        else:
            self.ipid += 1
            ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + length, self.ipid, 0x4000, 64, 6, 0)
            ip += self.src + self.dst
            ip = ip[:10] + struct.pack("!H", ~csum(ip) & 0xFFFF) + ip[12:]
        return ip + tcp + payload


def _tcp_of(packet: bytes) -> tuple[int, int, int, int]:
    """(sport, seq, ack, flags) of a TCP packet read from the TUN."""
    off = 40 if packet[0] >> 4 == 6 else (packet[0] & 15) * 4
    sport, _dport, seq, ack, _o, flags = struct.unpack_from("!HHIIBB", packet, off)
    return sport, seq, ack, flags


def _is_tcp(p: bytes, v6: bool) -> bool:
    return (p[0] >> 4 == 6 and p[6] == 6) if v6 else (p[0] >> 4 == 4 and p[9] == 6)


def _read_tcp(tun: Any, v6: bool, deadline: float) -> list[bytes]:
    import select
    got: list[bytes] = []
    while time.monotonic() < deadline:
        batch = tun.read_nowait() or []
        got += [p for p in batch if _is_tcp(p, v6)]
        if got:
            return got
        select.select([tun.fd], [], [], 0.05)
    raise TimeoutError("no TCP packet from the kernel")


def scenario() -> dict[str, Any]:
    sys.path.insert(0, str(REPO_ROOT))
    from trivpn.tun.linux import LinuxTun, open_tun

    fd, name = open_tun("tvgro%d")
    tun = LinuxTun(fd, name)
    subprocess.run(["ip", "link", "set", name, "mtu", "1500", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "10.77.0.1/24", "dev", name], check=True)
    subprocess.run(["ip", "-6", "addr", "add", "fd77::1/64", "dev", name, "nodad"], check=True)
    report: dict[str, Any] = {"vnet_hdr": tun.vnet_hdr}
    for v6, local, remote in ((False, "10.77.0.1", "10.77.0.2"), (True, "fd77::1", "fd77::2")):
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        lsock = socket.socket(fam, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        lsock.bind((local, 5001))
        lsock.listen(1)
        peer = Peer(v6, local, remote, 5001, 40000)
        deadline = time.monotonic() + 10
        tun.write_nowait([peer.packet(0x02, opts=struct.pack("!BBH", 2, 4, MSS))])  # SYN
        synack = _read_tcp(tun, v6, deadline)[0]
        _sport, kseq, _kack, flags = _tcp_of(synack)
        assert flags & 0x12 == 0x12, flags
        peer.seq += 1
        peer.ack = (kseq + 1) & 0xFFFFFFFF
        tun.write_nowait([peer.packet(0x10)])  # ACK
        conn, _ = lsock.accept()
        conn.setblocking(False)
        data = os.urandom(SEGMENTS * MSS - 300)
        chunks = [data[i:i + MSS] for i in range(0, len(data), MSS)]
        packets = []
        base = peer.seq
        for i, chunk in enumerate(chunks):
            flags = 0x18 if i % 97 == 96 else 0x10  # PSH now and then ends a group
            packets.append(peer.packet(flags, chunk))
            peer.seq = (peer.seq + len(chunk)) & 0xFFFFFFFF
        # a pure ACK and a duplicate (old) segment in the middle: neither may merge
        packets.insert(150, peer.packet(0x10, seq=(base + 150 * MSS) & 0xFFFFFFFF))
        packets.insert(250, packets[10])
        stats0 = (tun.stats.gso_writes, tun.stats.packets_written)
        received = bytearray()
        acks = 0
        sent = 0
        while len(received) < len(data) and time.monotonic() < deadline:
            if sent < len(packets):
                batch = packets[sent:sent + 64]
                sent += tun.write_nowait(batch)
            try:
                while True:
                    chunk = conn.recv(1 << 20)
                    if not chunk:
                        break
                    received += chunk
            except BlockingIOError:
                pass
            acks += sum(1 for p in tun.read_nowait() or [] if _is_tcp(p, v6))
            time.sleep(0.001)
        report["v6" if v6 else "v4"] = {
            "segments": len(chunks),
            "packets": len(packets),
            "bytes_sent": len(data),
            "bytes_received": len(received),
            "same": hashlib.sha256(received).digest() == hashlib.sha256(data).digest(),
            "gso_writes": tun.stats.gso_writes - stats0[0],
            "packets_written": tun.stats.packets_written - stats0[1],
            "acks_from_kernel": acks,
        }
        conn.close()
        lsock.close()
    tun.close()
    return report


# -- the test side ---------------------------------------------------------------------------


@pytest.mark.parametrize("gro", ["on", "off"])
def test_coalesced_segments_reach_a_kernel_socket_whole(gro: str) -> None:
    """With the offload (default) and without (TRIVPN_TUN_GRO=0): the same stream arrives
    whole; only with it do the writes merge and the kernel's ACKs drop."""
    require_root("TUN offload test", ("unshare", "ip"))  # CI=true: fails, else skips loudly
    env = {**os.environ, "PYTHONPATH": SCRIPT_PATH, "TRIVPN_TUN_GRO": "1" if gro == "on" else "0"}
    out = subprocess.run(["unshare", "--net", sys.executable, __file__, "scenario"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["vnet_hdr"] == (10 if gro == "on" else 0)
    for fam in ("v4", "v6"):
        r = report[fam]
        assert r["bytes_received"] == r["bytes_sent"], (fam, r)
        assert r["same"], (fam, r)
        assert r["packets_written"] == r["packets"], (fam, r)
        if gro == "off":
            # one write per packet, and the kernel ACKs about every second segment
            # (measured: 96 of 400)
            assert r["gso_writes"] == 0, (fam, r)
            assert r["acks_from_kernel"] >= r["segments"] // 8, (fam, r)
            continue
        # the 400 segments went in few writes: at most one per 64-packet batch and per
        # PSH/pure ACK/duplicate split, far below one write per segment
        assert 0 < r["gso_writes"] <= r["packets"] // 64 + 12, (fam, r)
        # and the kernel ACKed per merged write, not per two segments
        assert r["acks_from_kernel"] < r["segments"] // 4, (fam, r)


if __name__ == "__main__":
    if sys.argv[1:] == ["scenario"]:
        print(json.dumps(scenario()))
