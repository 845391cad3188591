"""The cryptography behind `trivpn pki`: certificates, the CRL and OpenVPN's key files.

Pure functions over `cryptography` objects and bytes (no files, no clock reads: `now` is
passed in), so each piece can be checked on its own.

Choices, and why:

* EC keys (P-256 by default, P-384 on request): small, fast handshakes, accepted by every
  OpenVPN 2.4+ build and by OpenVPN Connect.
* The CA is valid for ten years; leaf certificates for 825 days (what browsers and
  easy-rsa settled on), both back-dated an hour so small clock skew never matters.
* Leaf certificates carry the extensions `remote-cert-tls` checks: keyUsage
  (digitalSignature, keyAgreement for EC) and the serverAuth or clientAuth EKU; the server
  certificate also names itself in subjectAltName.
* Serial numbers are random (159 bits), so they never collide or reveal a count.
* tls-crypt-v2: the server key is OpenVPN's 128-byte `struct key` (Ke = first 32 bytes of
  its cipher half, Ka = first 32 bytes of its HMAC half); a client key is
  `Kc (256 bytes) || WKc` with `WKc = T || AES-256-CTR(Ke, IV = T[:16], Kc || metadata) || len`
  and `T = HMAC-SHA256(Ka, len || Kc || metadata)`; metadata is type 0x01 and the creation
  time as a 64-bit big-endian Unix time, as `openvpn --genkey tls-crypt-v2-client` writes.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trivpn.errors import ConfigError

CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=825)
BACKDATE = datetime.timedelta(hours=1)
#: X.509's upper bound on a common name (RFC 5280 ub-common-name); cryptography enforces it.
CN_MAX = 64

STATIC_KEY_BYTES = 256
_STATIC_BEGIN = "-----BEGIN OpenVPN Static key V1-----"
_STATIC_END = "-----END OpenVPN Static key V1-----"
V2_SERVER_KEY_BYTES = 128
V2_SERVER_BEGIN = "-----BEGIN OpenVPN tls-crypt-v2 server key-----"
V2_SERVER_END = "-----END OpenVPN tls-crypt-v2 server key-----"
V2_CLIENT_BEGIN = "-----BEGIN OpenVPN tls-crypt-v2 client key-----"
V2_CLIENT_END = "-----END OpenVPN tls-crypt-v2 client key-----"
#: Metadata type 1: the client key's creation time (8 bytes, big-endian Unix seconds).
V2_METADATA_TIMESTAMP = 0x01
_TAG_BYTES = 32


def new_key(curve: str) -> ec.EllipticCurvePrivateKey:
    if curve not in CURVES:
        raise ConfigError(f"curve must be one of {', '.join(CURVES)}, not {curve!r}")
    return ec.generate_private_key(CURVES[curve])


def _digest(key: ec.EllipticCurvePrivateKey) -> hashes.SHA256 | hashes.SHA384:
    return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key is not an EC key made by trivpn pki")
    return key


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(cn: str, curve: str, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    key = new_key(curve)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _digest(key))
    )
    return cert, key


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_leaf(
    cn: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    *,
    server: bool,
    lifetime: datetime.timedelta = LEAF_LIFETIME,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server (serverAuth, SAN = `cn`) or client (clientAuth) certificate signed by the CA.

    Never valid past the CA itself: a chain that outlives its root only fails later.
    """
    key = new_key("P-384" if ca_key.curve.key_size >= 384 else "P-256")
    eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(cn)]), critical=False)
    return builder.sign(ca_key, _digest(ca_key)), key


def make_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: list[tuple[int, datetime.datetime]],
    number: int,
    now: datetime.datetime,
) -> str:
    """A PEM CRL listing `revoked` (serial, when), valid until the CA expires.

    OpenSSL refuses every client once a CRL's nextUpdate has passed, so it is set to the
    CA's own end: the CRL never needs a periodic refresh to keep the server working.
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - BACKDATE)
        .next_update(ca_cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for serial, when in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca_key, _digest(ca_key))
    return crl.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _armor(begin: str, end: str, lines: list[str]) -> str:
    return "\n".join([begin, *lines, end]) + "\n"


def _b64_lines(data: bytes) -> list[str]:
    text = base64.b64encode(data).decode("ascii")
    return [text[i : i + 64] for i in range(0, len(text), 64)]


def static_key_text(key: bytes | None = None) -> str:
    """A 2048-bit OpenVPN static key (tls-crypt, tls-auth) in `openvpn --genkey` layout."""
    key = secrets.token_bytes(STATIC_KEY_BYTES) if key is None else key
    if len(key) != STATIC_KEY_BYTES:
        raise ConfigError(f"an OpenVPN static key is {STATIC_KEY_BYTES} bytes, not {len(key)}")
    lines = [key[i : i + 16].hex() for i in range(0, STATIC_KEY_BYTES, 16)]
    return "#\n# 2048 bit OpenVPN static key\n#\n" + _armor(_STATIC_BEGIN, _STATIC_END, lines)


def v2_server_key_text(key: bytes | None = None) -> str:
    """A tls-crypt-v2 server key (`openvpn --genkey tls-crypt-v2-server` layout)."""
    key = secrets.token_bytes(V2_SERVER_KEY_BYTES) if key is None else key
    if len(key) != V2_SERVER_KEY_BYTES:
        raise ConfigError(f"a tls-crypt-v2 server key is {V2_SERVER_KEY_BYTES} bytes")
    return _armor(V2_SERVER_BEGIN, V2_SERVER_END, _b64_lines(key))


def _armored(text: str, begin: str, end: str, what: str) -> bytes:
    start = text.find(begin)
    stop = text.find(end, start + 1)
    if start < 0 or stop < 0:
        raise ConfigError(f"no {what} found")
    try:
        return base64.b64decode("".join(text[start + len(begin) : stop].split()), validate=True)
    except ValueError:
        raise ConfigError(f"the {what} is not valid base64") from None


def v2_server_key_bytes(text: str) -> bytes:
    raw = _armored(text, V2_SERVER_BEGIN, V2_SERVER_END, "tls-crypt-v2 server key")
    if len(raw) != V2_SERVER_KEY_BYTES:
        raise ConfigError(f"the tls-crypt-v2 server key has {len(raw)} bytes, not {V2_SERVER_KEY_BYTES}")
    return raw


def _split_server_key(server_key: bytes) -> tuple[bytes, bytes]:
    """(Ke, Ka): the first 32 bytes of the cipher half and of the HMAC half."""
    return server_key[:32], server_key[64:96]


def _ctr(ke: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(ke), modes.CTR(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def wrap_client_key(server_key: bytes, kc: bytes, metadata: bytes) -> bytes:
    """WKc for client key `kc` (256 bytes) under the tls-crypt-v2 server key."""
    if len(kc) != STATIC_KEY_BYTES:
        raise ConfigError("a tls-crypt-v2 client key Kc is 256 bytes")
    ke, ka = _split_server_key(server_key)
    length = (_TAG_BYTES + len(kc) + len(metadata) + 2).to_bytes(2, "big")
    tag = hmac.new(ka, length + kc + metadata, hashlib.sha256).digest()
    return tag + _ctr(ke, tag[:16], kc + metadata) + length


def unwrap_client_key(server_key: bytes, wkc: bytes) -> tuple[bytes, bytes]:
    """(Kc, metadata) from a WKc, checking its length field and tag (what a server does)."""
    if len(wkc) < _TAG_BYTES + STATIC_KEY_BYTES + 2 or int.from_bytes(wkc[-2:], "big") != len(wkc):
        raise ConfigError("malformed tls-crypt-v2 wrapped client key")
    ke, ka = _split_server_key(server_key)
    tag, sealed = wkc[:_TAG_BYTES], wkc[_TAG_BYTES:-2]
    plain = _ctr(ke, tag[:16], sealed)
    expect = hmac.new(ka, wkc[-2:] + plain, hashlib.sha256).digest()
    if not hmac.compare_digest(tag, expect):
        raise ConfigError("tls-crypt-v2 wrapped client key: the tag does not match this server key")
    return plain[:STATIC_KEY_BYTES], plain[STATIC_KEY_BYTES:]


def v2_client_key_text(server_key: bytes, now: datetime.datetime) -> str:
    """A fresh tls-crypt-v2 client key for one client, wrapped with the server key."""
    kc = secrets.token_bytes(STATIC_KEY_BYTES)
    metadata = bytes([V2_METADATA_TIMESTAMP]) + int(now.timestamp()).to_bytes(8, "big")
    return _armor(V2_CLIENT_BEGIN, V2_CLIENT_END, _b64_lines(kc + wrap_client_key(server_key, kc, metadata)))


def v2_client_blob(text: str) -> bytes:
    return _armored(text, V2_CLIENT_BEGIN, V2_CLIENT_END, "tls-crypt-v2 client key")
