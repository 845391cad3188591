"""One-off (issue 16): what each TLS object costs in RSS when a client loads its profile.

In a fresh process (after the imports of `trivpn connect`), times one by one: parsing the
CA and client certificates with `cryptography.x509`, loading the private key, creating an
`SSL.Context`, attaching the certificate and the key, adding the CA to the store, and
making an `SSL.Connection`; prints the RSS each step added. The PKI is generated in a child
first, so that generating it does not warm the code this measures.

Usage: python3 issue16_tls_objects_rss.py TREE
"""
import json
import os
import subprocess
import sys
import tempfile

tree = os.path.abspath(sys.argv[1])
env = dict(os.environ, PYTHONPATH=tree)
pki_file = os.path.join(tempfile.mkdtemp(), "pki.json")
subprocess.run([sys.executable, "-c", (
    "import json, sys\n"
    "from trivpn.testing.pki import generate_pki\n"
    "p = generate_pki()\n"
    "json.dump({k: getattr(p, k) for k in ('ca_cert', 'client_cert', 'client_key')}, open(sys.argv[1], 'w'))\n"
), pki_file], env=env, check=True, timeout=120)

CHILD = r'''
import json, sys
import trivpn.cli, trio, trivpn.tlssession.tls, trivpn.session.config
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
pki = json.load(open(sys.argv[1]))
state = {}
steps = [
    ("parse the CA certificate (x509)", lambda: x509.load_pem_x509_certificate(pki["ca_cert"].encode())),
    ("parse the client certificate", lambda: x509.load_pem_x509_certificate(pki["client_cert"].encode())),
    ("load the private key", lambda: serialization.load_pem_private_key(pki["client_key"].encode(), None)),
    ("SSL.Context (SSL_CTX_new)", lambda: state.update(ctx=SSL.Context(SSL.TLS_METHOD))),
    ("attach the certificate", lambda: state["ctx"].use_certificate(
        crypto.X509.from_cryptography(x509.load_pem_x509_certificate(pki["client_cert"].encode())))),
    ("attach the key", lambda: state["ctx"].use_privatekey(crypto.PKey.from_cryptography_key(
        serialization.load_pem_private_key(pki["client_key"].encode(), None)))),
    ("add the CA to the store", lambda: state["ctx"].get_cert_store().add_cert(
        crypto.X509.from_cryptography(x509.load_pem_x509_certificate(pki["ca_cert"].encode())))),
    ("SSL.Connection", lambda: SSL.Connection(state["ctx"], None)),
]
before = rss()
print(f"after the imports: {before:.1f} MB")
for name, step in steps:
    step()
    now = rss()
    print(f"{name:34s} +{now - before:.2f} MB")
    before = now
'''
subprocess.run([sys.executable, "-P", "-c", CHILD, pki_file], env=env, check=True, timeout=120)
