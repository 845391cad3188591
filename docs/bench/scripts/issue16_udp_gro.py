"""One-off (issue 16): UDP_GRO on receive: ns per datagram with recvmsg + cmsg when the sender
uses GSO (datagrams coalesced) and when it does not. Usage: python3 issue16_udp_gro.py"""
import socket, os, time, statistics, struct, sys

from trivpn.bench.profile import udp_pair as _udp_pair
UDP_GRO=104; UDP_SEGMENT=103
a, peer = _udp_pair()
a.setsockopt(17, UDP_GRO, 1)
pkt = os.urandom(1424)
def fill_gso(n=64):
    for k in range(0, n, 32): peer.sendmsg([pkt*32], [(17, UDP_SEGMENT, struct.pack("=H", len(pkt)))])
    return
    peer.sendmsg([pkt*n], [(17, UDP_SEGMENT, struct.pack("=H", len(pkt)))])
def fill_plain(n=64):
    for _ in range(n): peer.send(pkt)
def recv_gro():
    out=[]
    while True:
        try: data, anc, flags, addr = a.recvmsg(65536, 64)
        except BlockingIOError: break
        seg = len(data)
        for lvl, typ, val in anc:
            if lvl == 17 and typ == UDP_GRO: seg = struct.unpack("=H", val[:2])[0] if len(val)==2 else struct.unpack("=i", val[:4])[0]
        out += [data[i:i+seg] for i in range(0, len(data), seg)]
    return out
for fill, label in ((fill_gso, "GSO sender"), (fill_plain, "plain sender")):
    ts=[]; counts=[]
    for _ in range(200):
        fill(); time.sleep(0.0005)
        t0=time.thread_time_ns(); r=recv_gro(); ts.append(time.thread_time_ns()-t0); counts.append(len(r))
        assert all(x == pkt for x in r), "mismatch"
    print(label, "ns/pkt", statistics.median(ts)/64, "pkts", statistics.median(counts))
