"""One-off (issue 16): what one AEAD seal costs by plaintext size, through `cryptography`
(what trivpn calls, one `encrypt` per packet) and through the system's OpenSSL
(`openssl speed -aead`, the same init / AAD / update / final / tag sequence in C, no
Python). Why: the UDP ChaCha20 upload is the one cell below 1.3×, and a 1400-byte
ChaCha20-Poly1305 seal costs trivpn about twice an AES-256-GCM one.

The `cryptography` column minus the `openssl speed` column is what the binding adds per
call; the shape of the `openssl speed` column is OpenSSL's own. Best of 3 timings of 50,000
calls per size (cryptography), 1 s per size (openssl speed).

Usage: python3 docs/bench/scripts/issue16_aead_sizes.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

SIZES = (64, 512, 1024, 1344, 1392, 1400, 1408, 1472, 2048, 8192)
AEADS = {"chacha20-poly1305": ChaCha20Poly1305, "aes-256-gcm": AESGCM}


def binding_ns(cls: type, size: int) -> float:
    enc = cls(os.urandom(32)).encrypt
    nonce, aad, data = os.urandom(12), os.urandom(13), os.urandom(size)
    best = float("inf")
    for _ in range(3):
        n = 50_000
        t = time.perf_counter()
        for _ in range(n):
            enc(nonce, data, aad)
        best = min(best, (time.perf_counter() - t) / n * 1e9)
    return best


def openssl_ns(name: str, size: int) -> float | None:
    out = subprocess.run(
        ["openssl", "speed", "-seconds", "1", "-bytes", str(size), "-aead", "-evp", name],
        capture_output=True, text=True, check=False,
    ).stdout
    m = re.search(r"^\S+\s+([\d.]+)k\s*$", out, re.M)
    return size / (float(m.group(1)) * 1000) * 1e9 if m else None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    a = p.parse_args()
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    rows = []
    print(f"cryptography {cryptography.__version__} ({backend.openssl_version_text()}); "
          f"openssl speed: {version}")
    print("| bytes | cipher | cryptography ns | openssl speed -aead ns |")
    print("|---|---|---|---|")
    for size in SIZES:
        for name, cls in AEADS.items():
            row = {"bytes": size, "cipher": name, "cryptography_ns": round(binding_ns(cls, size)),
                   "openssl_speed_ns": openssl_ns(name, size)}
            if row["openssl_speed_ns"] is not None:
                row["openssl_speed_ns"] = round(row["openssl_speed_ns"])
            rows.append(row)
            print(f"| {size} | {name} | {row['cryptography_ns']} | {row['openssl_speed_ns']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cryptography": cryptography.__version__,
                       "cryptography_openssl": backend.openssl_version_text(),
                       "system_openssl": version, "python": sys.version.split()[0],
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
