"""One-off (issue 16, 2026-12-02): what one AEAD call costs, per cipher, in `cryptography`
and in the system's OpenSSL called from C.

Why: on an Intel Xeon with AVX-512 the UDP ChaCha20-Poly1305 cell ran at 1.00x OpenVPN's
client where AES-256-GCM ran at 1.14x, and trivpn's CPU per GB was 7.1 s/GB against 4.8.
The Python around the AEAD is the same for both ciphers (`AEADKey.seal_batch`), so this
times the AEAD call alone: `cryptography`'s `encrypt` (its own statically linked OpenSSL),
and the same EVP sequence in C against the system's libcrypto (what OpenVPN links), once
copying a keyed context per packet as `cryptography` does and once re-using one context
as OpenVPN does. The C part needs gcc and libssl-dev; without them it is skipped.

Usage: python3 issue16_aead_call_cost.py [--json OUT]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

SIZES = (16, 1400)

C_PROBE = r"""
#include <openssl/evp.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static void run(const char *name, const EVP_CIPHER *c, int size, int reuse) {
    unsigned char key[32] = {1}, iv[12] = {2}, aad[8] = {3}, in[2048] = {4}, out[2100], tag[16];
    EVP_CIPHER_CTX *base = EVP_CIPHER_CTX_new(), *keep = EVP_CIPHER_CTX_new();
    EVP_EncryptInit_ex(base, c, NULL, key, NULL);
    EVP_EncryptInit_ex(keep, c, NULL, key, NULL);
    int n = 200000, l;
    double best = 1e9;
    for (int r = 0; r < 3; r++) {
        double t0 = now();
        for (int i = 0; i < n; i++) {
            EVP_CIPHER_CTX *x = keep;
            if (!reuse) {
                x = EVP_CIPHER_CTX_new();
                EVP_CIPHER_CTX_copy(x, base);
                EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL);
            }
            iv[0] = (unsigned char)i;
            EVP_EncryptInit_ex(x, NULL, NULL, NULL, iv);
            EVP_EncryptUpdate(x, NULL, &l, aad, 8);
            EVP_EncryptUpdate(x, out, &l, in, size);
            EVP_EncryptFinal_ex(x, out + l, &l);
            EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, tag);
            if (!reuse) EVP_CIPHER_CTX_free(x);
        }
        double per = (now() - t0) / n * 1e9;
        if (per < best) best = per;
    }
    printf("%s\t%d\t%s\t%.0f\n", name, size, reuse ? "reused context" : "context copied per call", best);
}
int main(void) {
    int sizes[] = {16, 1400};
    for (int s = 0; s < 2; s++)
        for (int reuse = 0; reuse < 2; reuse++) {
            run("AES-256-GCM", EVP_aes_256_gcm(), sizes[s], reuse);
            run("CHACHA20-POLY1305", EVP_chacha20_poly1305(), sizes[s], reuse);
        }
    return 0;
}
"""


def time_cryptography() -> list[dict[str, object]]:
    rows = []
    nonce, aad = os.urandom(12), os.urandom(8)
    for size in SIZES:
        msg = os.urandom(size)
        for name, cls in (("AES-256-GCM", AESGCM), ("CHACHA20-POLY1305", ChaCha20Poly1305)):
            aead = cls(os.urandom(32))
            best = 1e9
            for _ in range(5):
                n = 20000
                t0 = time.perf_counter()
                for _ in range(n):
                    aead.encrypt(nonce, msg, aad)
                best = min(best, (time.perf_counter() - t0) / n)
            rows.append({"impl": f"cryptography ({backend.openssl_version_text()})",
                         "cipher": name, "bytes": size, "ns": round(best * 1e9)})
    return rows


def time_system_openssl() -> list[dict[str, object]]:
    if shutil.which("gcc") is None or not os.path.exists("/usr/include/openssl/evp.h"):
        print("gcc or libssl-dev missing: the C probe is skipped", file=sys.stderr)
        return []
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "probe.c"), os.path.join(tmp, "probe")
        with open(src, "w") as f:
            f.write(C_PROBE)
        subprocess.run(["gcc", "-O2", "-o", exe, src, "-lcrypto"], check=True, timeout=60)
        out = subprocess.run([exe], check=True, capture_output=True, text=True, timeout=120).stdout
    version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    rows = []
    for line in out.splitlines():
        cipher, size, how, ns = line.split("\t")
        rows.append({"impl": f"system {version}, C, {how}", "cipher": cipher,
                     "bytes": int(size), "ns": int(ns)})
    return rows


def main() -> None:
    rows = time_cryptography() + time_system_openssl()
    for r in rows:
        print(f"{r['impl']:58} {r['cipher']:18} {r['bytes']:5} B  {r['ns']:5} ns")
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump({"cpu": _cpu(), "rows": rows}, f, indent=1)


def _cpu() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")


if __name__ == "__main__":
    main()
