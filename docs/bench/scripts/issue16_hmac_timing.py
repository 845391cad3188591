"""One-off (issue 16): tls-auth and tls-crypt wrap/verify/open per 100-byte control packet.

timeit, best of 5 x 20,000, for the trivpn in TREE (compare two trees by running it twice).
Usage: python3 issue16_hmac_timing.py TREE
"""
import os
import sys
import timeit

sys.path.insert(0, os.path.abspath(sys.argv[1]))
from trivpn.controlchannel.wrap import StaticKey, TLSAuth, TLSCrypt  # noqa: E402

key = StaticKey(os.urandom(256))
auth_a, auth_b = TLSAuth(key, 0, "SHA256", timestamp=1), TLSAuth(key, 1, "SHA256", timestamp=1)
crypt_s, crypt_c = TLSCrypt(key, server=True, timestamp=1), TLSCrypt(key, server=False, timestamp=1)
packet = bytes(9) + os.urandom(100)
wrapped = auth_a.wrap(packet, 0.0)
forged = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
sealed = crypt_s.wrap(packet, 0.0)
N = 20000


def best(fn):  # microseconds per call
    return min(timeit.repeat(fn, number=N, repeat=5)) / N * 1e6


print(f"{sys.argv[1]}: tls-auth wrap {best(lambda: auth_a.wrap(packet, 0.0)):.2f} us, "
      f"reject a forged packet {best(lambda: auth_b.verifies(forged, 0.0)):.2f} us, "
      f"tls-crypt wrap {best(lambda: crypt_s.wrap(packet, 0.0)):.2f} us, "
      f"open {best(lambda: crypt_c._open(sealed)):.2f} us")
