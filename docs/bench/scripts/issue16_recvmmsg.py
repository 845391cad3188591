"""One-off (issue 16): ns per datagram of socket.recv in a loop vs recvmmsg through ctypes
(batches of 64, 8, 1) on loopback. Usage: python3 issue16_recvmmsg.py [SLOT_BYTES]"""
import ctypes, ctypes.util, socket, os, time, statistics, sys

from trivpn.bench.profile import udp_pair as _udp_pair
libc = ctypes.CDLL(None, use_errno=True)
class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]
class msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]
class mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", msghdr), ("msg_len", ctypes.c_uint)]
N=64; SLOT=int(sys.argv[1]) if len(sys.argv)>1 else 65536
buf = ctypes.create_string_buffer(N*SLOT)
base = ctypes.addressof(buf)
iovs = (iovec * N)(*[iovec(base + i*SLOT, SLOT) for i in range(N)])
msgs = (mmsghdr * N)()
for i in range(N):
    msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i]); msgs[i].msg_hdr.msg_iovlen = 1
recvmmsg = libc.recvmmsg
recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
recvmmsg.restype = ctypes.c_int
MSG_DONTWAIT = 0x40
string_at = ctypes.string_at
lens_off = mmsghdr.msg_len.offset; stride = ctypes.sizeof(mmsghdr)
msgs_addr = ctypes.addressof(msgs)
mv = memoryview(msgs).cast('B')
import struct
def recv_batch(fd, limit=N):
    n = recvmmsg(fd, msgs_addr, limit, MSG_DONTWAIT, None)
    if n < 0: return []
    out = []
    for i in range(n):
        ln = msgs[i].msg_len
        out.append(string_at(base + i*SLOT, ln))
    return out
u_from = struct.Struct("=I").unpack_from
def recv_batch2(fd, limit=N):
    n = recvmmsg(fd, msgs_addr, limit, MSG_DONTWAIT, None)
    if n < 0: return []
    return [string_at(base + i*SLOT, u_from(mv, i*stride + lens_off)[0]) for i in range(n)]
a, peer = _udp_pair()
pkt = os.urandom(1424)
def fill(n=64):
    for _ in range(n): peer.send(pkt)
def run(label, fn, n=64):
    ts=[]
    for _ in range(300):
        fill(n); time.sleep(0.0003)
        t0=time.thread_time_ns(); r = fn(); ts.append(time.thread_time_ns()-t0)
        assert len(r) == n and r[0] == pkt, len(r)
    print(f"{label:28s} n={n:2d} {statistics.median(ts)/n:7.0f} ns/pkt")
def plain(n=64):
    recv=a.recv; return [recv(65536) for _ in range(n)]
fd=a.fileno()
for n in (64, 8, 1):
    for r in range(2):
        run("recv loop", lambda: plain(n), n); run("recvmmsg", lambda: recv_batch(fd, n), n); run("recvmmsg unpack", lambda: recv_batch2(fd, n), n)
