"""One-off (issue 16): one operation of the data path timed alone right after a sleep of GAP
seconds (cold) — AEAD, Encryptor/Decryptor, a UDP recv, an AF_UNIX write — in one thread.
Usage: python3 issue16_cold_ops.py [GAP]   (0.01: cold; 0.0001: nearly hot)"""
import os, time, socket, statistics, sys

from trivpn.bench.profile import make_pair as _pair, plain_packets as _plain, udp_pair as _udp_pair, tun_pair as _tun_pair
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
client, server = _pair("AES-256-GCM")
pkt = _plain(100, 1)
aead = AESGCM(os.urandom(32)); nonce=os.urandom(12); ad=os.urandom(8)
ct = aead.encrypt(nonce, pkt[0], ad)
a, peer = _udp_pair()
t_ours, t_peer = _tun_pair()
def op_noop(): pass
def op_aead(): aead.decrypt(nonce, ct, ad)
def op_aead_enc(): aead.encrypt(nonce, pkt[0], ad)
wires = []
def op_decrypt(): client.rx.decrypt(wires.pop(), 0.0)
def op_encrypt(): client.tx.encrypt(pkt, 0.0)
def op_read(): a.recv(65536)
def op_write(): os.write(t_ours.fileno(), pkt[0])
def op_time(): time.monotonic()
ops = dict(noop=op_noop, time=op_time, aead_dec=op_aead, aead_enc=op_aead_enc, decrypt=op_decrypt, encrypt=op_encrypt, udp_read=op_read, unix_write=op_write)
gap = float(sys.argv[1]) if len(sys.argv) > 1 else 0.01
N=60
res = {k: [] for k in ops}
for i in range(N):
    for k, f in ops.items():
        if k == 'decrypt': wires.append(server.tx.encrypt(pkt, 0.0))
        if k == 'udp_read': peer.send(pkt[0]); time.sleep(0.001)
        time.sleep(gap)
        t0 = time.perf_counter_ns(); f(); t1 = time.perf_counter_ns()
        res[k].append((t1-t0)/1000)
        if k == 'unix_write': t_peer.recv(65536)
for k, v in res.items():
    print(f"{k:12s} p50 {statistics.median(v):7.1f} us  min {min(v):6.1f}")
