"""A small throw-away PKI for tests: CA, server and client certificates, an OpenVPN static key.

The certificates carry exactly the extensions a stock OpenVPN setup checks, so the same
files satisfy Debian's openvpn and a user-style profile: `remote-cert-tls server` demands a
keyUsage extension and the "TLS Web Server Authentication" extended key usage on the
server certificate (and clientAuth on the client's for `remote-cert-tls client`).
A second, unrelated CA lets tests check that verification really fails.
"""

from __future__ import annotations

import dataclasses
import datetime
import secrets
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trivpn.errors import ConfigError
from trivpn.records import dataclass

#: Size of an OpenVPN static key file ("2048 bit OpenVPN static key"): 4 slots of 64 bytes.
STATIC_KEY_BYTES = 256
#: OpenVPN writes the key as 16 lines of 16 bytes in lowercase hex.
STATIC_KEY_BYTES_PER_LINE = 16
RSA_KEY_BITS = 2048
#: Validity window; starts a day in the past so clock skew between namespaces never matters.
CERT_BACKDATE = datetime.timedelta(days=1)
CERT_LIFETIME = datetime.timedelta(days=365)
KEY_TYPES = ("ec", "rsa")

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True, slots=True)
class PKI:
    """PEM texts of one test PKI (plus an OpenVPN static key for tls-auth / tls-crypt)."""

    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    static_key: str
    other_ca_cert: str


def _new_key(key_type: str) -> _PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def _key_pem(key: _PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _name(cn: str) -> x509.Name:
    with warnings.catch_warnings():  # tests need CNs over X.509's 64 characters too
        warnings.simplefilter("ignore", UserWarning)
        common = x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "trivpn tests"), common])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: CertificatePublicKeyTypes
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CERT_BACKDATE)
        .not_valid_after(now + CERT_LIFETIME)
    )


def _make_ca(cn: str, key_type: str) -> tuple[x509.Certificate, _PrivateKey]:
    key = _new_key(key_type)
    name = _name(cn)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    cn: str, key_type: str, ca_cert: x509.Certificate, ca_key: _PrivateKey, *, server: bool
) -> tuple[x509.Certificate, _PrivateKey]:
    key = _new_key(key_type)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(_name(cn), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                # RSA key exchange needs keyEncipherment; an EC key agrees keys instead.
                key_encipherment=key_type == "rsa",
                data_encipherment=False,
                key_agreement=key_type == "ec",
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def static_key_text(key: bytes | None = None) -> str:
    """Format 256 bytes (random if not given) exactly like `openvpn --genkey secret` does."""
    if key is None:
        key = secrets.token_bytes(STATIC_KEY_BYTES)
    if len(key) != STATIC_KEY_BYTES:
        raise ConfigError(f"an OpenVPN static key is {STATIC_KEY_BYTES} bytes, not {len(key)}")
    step = STATIC_KEY_BYTES_PER_LINE
    lines = [key[i : i + step].hex() for i in range(0, STATIC_KEY_BYTES, step)]
    return (
        "#\n"
        f"# {STATIC_KEY_BYTES * 8} bit OpenVPN static key\n"
        "#\n"
        "-----BEGIN OpenVPN Static key V1-----\n"
        + "\n".join(lines)
        + "\n-----END OpenVPN Static key V1-----\n"
    )


def common_name(cert_pem: str) -> str:
    """The subject CN of a PEM certificate (what `verify-x509-name … name` compares)."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        raise ConfigError("certificate has no common name")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode()


def generate_pki(
    *,
    server_cn: str = "trivpn-test-server",
    client_cn: str = "trivpn-test-client",
    key_type: str = "ec",
) -> PKI:
    """Make a fresh CA, server and client certificates, an unrelated CA and a static key.

    `key_type` is "ec" (P-256, fast) or "rsa" (2048 bits). Generating RSA keys takes a
    noticeable fraction of a second, so tests build one PKI per session.
    """
    if key_type not in KEY_TYPES:
        raise ConfigError(f"key_type must be one of {', '.join(KEY_TYPES)}, not {key_type!r}")
    ca_cert, ca_key = _make_ca("trivpn test CA", key_type)
    server_cert, server_key = _make_leaf(server_cn, key_type, ca_cert, ca_key, server=True)
    client_cert, client_key = _make_leaf(client_cn, key_type, ca_cert, ca_key, server=False)
    other_ca_cert, _ = _make_ca("trivpn unrelated CA", key_type)
    return PKI(
        ca_cert=_cert_pem(ca_cert),
        ca_key=_key_pem(ca_key),
        server_cert=_cert_pem(server_cert),
        server_key=_key_pem(server_key),
        client_cert=_cert_pem(client_cert),
        client_key=_key_pem(client_key),
        static_key=static_key_text(),
        other_ca_cert=_cert_pem(other_ca_cert),
    )


def with_client(pki: PKI, client_cn: str) -> PKI:
    """`pki` with a new client certificate and key for `client_cn`, signed by the same CA
    (a server test needs several clients with different common names)."""
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.encode("ascii"))
    ca_key = serialization.load_pem_private_key(pki.ca_key.encode("ascii"), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError("the test CA key is neither EC nor RSA")
    key_type = "ec" if isinstance(ca_key, ec.EllipticCurvePrivateKey) else "rsa"
    cert, key = _make_leaf(client_cn, key_type, ca_cert, ca_key, server=False)
    return dataclasses.replace(pki, client_cert=_cert_pem(cert), client_key=_key_pem(key))


def revoke(pki: PKI, *cert_pems: str) -> str:
    """A PEM CRL from `pki`'s CA revoking `cert_pems` (none: an empty, valid CRL).

    Valid from a day ago for a year, like the certificates, so OpenSSL's CRL time checks pass.
    """
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.encode("ascii"))
    ca_key = serialization.load_pem_private_key(pki.ca_key.encode("ascii"), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError("the test CA key is neither EC nor RSA")
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CERT_BACKDATE)
        .next_update(now + CERT_LIFETIME)
    )
    for pem in cert_pems:
        serial = x509.load_pem_x509_certificate(pem.encode("ascii")).serial_number
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - CERT_BACKDATE)
        builder = builder.add_revoked_certificate(entry.build())
    crl = builder.sign(ca_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True, slots=True)
class SelfSigned:
    """A self-signed certificate and its key (PEM), for 2.6's PKI-less peer-fingerprint mode."""

    cert: str
    key: str

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate as `peer-fingerprint` spells it (AB:CD:...)."""
        der = x509.load_pem_x509_certificate(self.cert.encode("ascii")).public_bytes(serialization.Encoding.DER)
        return ":".join(f"{b:02X}" for b in hashes_sha256(der))


def hashes_sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def self_signed(cn: str, key_type: str = "ec") -> SelfSigned:
    """A certificate signed by its own key, like `openssl req -x509` makes for PKI-less set-ups
    (no CA, no key usage extensions: only the fingerprint is checked)."""
    if key_type not in KEY_TYPES:
        raise ConfigError(f"key type must be one of {', '.join(KEY_TYPES)}, not {key_type!r}")
    key = _new_key(key_type)
    cert = _builder(_name(cn), _name(cn), key.public_key()).sign(key, hashes.SHA256())
    return SelfSigned(_cert_pem(cert), _key_pem(key))
