"""Certificate revocation lists (OpenVPN's ``crl-verify FILE``) for the TLS engine.

A CRL is only useful if OpenSSL can trust it, so it is checked once here, where a mistake
becomes a one-line ConfigError at start instead of every client being refused later: it
must parse as one PEM CRL and be signed by one of the configured CA certificates. OpenSSL
then checks the peer's own certificate against it during the handshake (X509_V_FLAG_CRL_CHECK,
as OpenVPN sets it); a revoked peer fails verification like any other chain error.
`UNUSABLE_CRL` turns the check on without any CRL: then OpenSSL refuses every peer
certificate ("unable to get certificate CRL"), which is what OpenVPN ends up doing when its
CRL file cannot be read (it clears the old CRLs before loading the file).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from trivpn.errors import ConfigError
from trivpn.tlssession.tlsload import pem_problem

__all__ = ["MAX_CRL_BYTES", "UNUSABLE_CRL", "check_crl", "load_crl"]

#: Largest CRL file we read (a CRL with ~100k entries is a few MB; this bounds memory).
MAX_CRL_BYTES = 16 * 1024 * 1024
#: `TLSConfig.crl_pem` while the crl-verify file cannot be used: every certificate is refused
UNUSABLE_CRL = ""
_SIGNING_KEYS = (
    rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey, dsa.DSAPublicKey,
)


def load_crl(crl_pem: str, ca_certs: list[x509.Certificate]) -> x509.CertificateRevocationList:
    """Parse `crl_pem` and check that one of `ca_certs` signed it (ConfigError otherwise)."""
    if len(crl_pem) > MAX_CRL_BYTES:
        raise ConfigError(f"the CRL is larger than {MAX_CRL_BYTES} bytes")
    try:
        crl = x509.load_pem_x509_crl(crl_pem.encode("ascii", "replace"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the CRL (PEM): {pem_problem(exc)}") from None
    for ca in ca_certs:
        if ca.subject != crl.issuer:
            continue
        key = ca.public_key()
        if not isinstance(key, _SIGNING_KEYS):  # X25519/X448 keys cannot sign anything
            continue
        try:
            if crl.is_signature_valid(key):
                return crl
        except (TypeError, ValueError):
            continue
    raise ConfigError("the CRL is not signed by the configured CA certificate (ca)")


def check_crl(crl_pem: str, ca_pem: str) -> None:
    """Validate a CRL against the CA bundle text at start (ConfigError when unusable)."""
    try:
        cas = x509.load_pem_x509_certificates(ca_pem.encode("ascii", "replace"))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the CA certificate (PEM): {pem_problem(exc)}") from None
    load_crl(crl_pem, cas)
