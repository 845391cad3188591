"""One-off (issue 16): RSS each layer of the crypto stack adds in a fresh interpreter, after
`ssl` (which trio imports anyway). Usage: python3 -P issue16_crypto_split.py (run it 3×)."""
import re


def rss_mb() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024


import ssl, ctypes  # noqa: E401,F401  trio's share
a = rss_mb()
import cryptography.hazmat.bindings._rust  # noqa: F401  the Rust extension (its own OpenSSL)
b = rss_mb()
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401  what the data path uses
c = rss_mb()
import cryptography.x509, cryptography.hazmat.primitives.serialization  # noqa: E401,F401
d = rss_mb()
import OpenSSL.SSL  # noqa: F401  pyOpenSSL (on 3.11 it pulls asyncio through typing_extensions)
e = rss_mb()
print(f"after ssl {a:.1f} MB; Rust extension +{b - a:.2f}; AEAD classes +{c - b:.2f}; "
      f"x509 + serialization +{d - c:.2f}; pyOpenSSL (+asyncio) +{e - d:.2f}")
