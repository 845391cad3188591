"""Loading what a TLS context is made of: names, certificates, the key, the option knobs.

Split from `trivpn.tlssession.tls` (the engine) so each stays readable: these helpers turn
PEM text and profile options into OpenSSL state, each problem a one-line ConfigError.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

from trivpn.errors import ConfigError

if TYPE_CHECKING:
    from trivpn.tlssession.tls import TLSConfig

__all__ = ["CERT_PROFILES", "common_name", "crl_dir_check", "format_subject", "load_certs", "load_identity", "pem_problem",
           "restrict"]

#: tls-cert-profile -> OpenSSL security level (what each profile requires of keys and digests)
CERT_PROFILES = {"legacy": 1, "preferred": 2, "suiteb": 3}

# Short names OpenSSL prints with XN_FLAG_FN_SN (what OpenVPN logs and compares for
# verify-x509-name ... subject). Unknown attributes are printed as dotted OIDs.
_SHORT_NAMES = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.STREET_ADDRESS: "street",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.USER_ID: "UID",
    NameOID.TITLE: "title",
    NameOID.GIVEN_NAME: "GN",
    NameOID.SURNAME: "SN",
    NameOID.INITIALS: "initials",
    NameOID.PSEUDONYM: "pseudonym",
    NameOID.DN_QUALIFIER: "dnQualifier",
    NameOID.POSTAL_CODE: "postalCode",
}

#: Private keys pyOpenSSL can put into a TLS context (others get a one-line error).
_TLS_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


def _esc_ctrl(value: str) -> str:
    """Control characters as \\XX, as OpenSSL's ASN1_STRFLGS_ESC_CTRL (OpenVPN's flag) does:
    a subject with a line break cannot write lines of its own into a log."""
    return "".join(f"\\{ord(c):02X}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in value)


def format_subject(name: x509.Name) -> str:
    """Render a subject the way OpenVPN prints it: "C=US, O=x, CN=y" in certificate order,
    control characters escaped (`_esc_ctrl`)."""
    rdns = []
    for rdn in name.rdns:
        parts = []
        for attr in rdn:
            key = _SHORT_NAMES.get(attr.oid, attr.oid.dotted_string)
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            parts.append(f"{key}={_esc_ctrl(value)}")
        rdns.append(" + ".join(parts))
    return ", ".join(rdns)


def subject_fields(name: x509.Name) -> list[tuple[str, str]]:
    """Each attribute of a subject as (short name, value), in certificate order: what the
    X509_N_* variables are made of. Taken from the certificate itself, never split out of
    `format_subject`'s text, where a value holding ", CN=alice" would add a field."""
    return [
        (_SHORT_NAMES.get(attr.oid, attr.oid.dotted_string),
         attr.value if isinstance(attr.value, str) else attr.value.hex())
        for rdn in name.rdns
        for attr in rdn
    ]


def common_name(name: x509.Name) -> str:
    """The (last) CN of a subject, or "" when there is none."""
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        return ""
    value = cns[-1].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def remap_name(text: str) -> str:
    """OpenVPN's `string_mod_remap_name` (CC_PRINT without CC_CRLF): every control
    character (below 0x20, and DEL) becomes '_'; UTF-8 stays (Debian's openvpn 2.6.14 lists
    the CN "mal\\nX,é" as "mal_X,é" in its status file)."""
    return "".join("_" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def peer_common_name(name: x509.Name) -> str:
    """A peer's common name as a server uses it (status file, pool, ccd, logs): the last CN
    attribute itself, never parsed back out of the rendered subject (a value holding
    ", CN=alice" would name another client), its control characters remapped (`remap_name`)."""
    return remap_name(common_name(name))


def pem_problem(exc: Exception) -> str:
    """What is wrong with a PEM block, in words: `cryptography` reports bad DER inside a
    well-framed block as its parser's debug form (`ParseError { kind: UnexpectedTag … }`)
    and bad framing with a link to its FAQ."""
    text = str(exc)
    if text.startswith("error parsing asn1 value"):
        return "the data inside the PEM block is not valid DER (corrupt, or another kind of object)"
    if text.startswith("Unable to load PEM file"):
        return "no well-formed PEM block (-----BEGIN …----- / base64 / -----END …-----)"
    return text


def load_certs(pem: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ConfigError(f"cannot read the {what} (PEM): {pem_problem(exc)}") from None
    if not certs:
        raise ConfigError(f"the {what} contains no certificate")
    return certs


def restrict(ctx: SSL.Context, config: TLSConfig) -> None:
    """tls-cipher, tls-ciphersuites, tls-groups and tls-cert-profile (a bad value: ConfigError)."""
    ciphers = config.cipher_list or "DEFAULT"
    if config.security_level is not None:
        ciphers += f":@SECLEVEL={config.security_level}"
    try:
        if config.cipher_list is not None or config.security_level is not None:
            ctx.set_cipher_list(ciphers.encode())
        if config.ciphersuites is not None:
            ctx.set_tls13_ciphersuites(config.ciphersuites.encode())
    except SSL.Error:
        raise ConfigError(f"OpenSSL accepts none of the TLS ciphers in {ciphers!r}") from None
    if config.groups is not None:
        from OpenSSL._util import lib  # pyOpenSSL has no public call for groups

        if lib.SSL_CTX_set1_curves_list(ctx._context, config.groups.encode()) != 1:
            raise ConfigError(f"tls-groups {config.groups!r}: OpenSSL knows none of these groups")


def crl_dir_check(crl_dir: str | None, cert: x509.Certificate) -> str | None:
    """OpenVPN's `crl-verify DIR dir`: a file named after the decimal serial revokes."""
    if crl_dir is None:
        return None
    if os.path.exists(os.path.join(crl_dir, str(cert.serial_number))):
        return f"certificate serial {cert.serial_number} is revoked (crl-verify dir)"
    return None


def load_identity(ctx: SSL.Context, cert_pem: str, key_pem: str, password: bytes | None = None) -> None:
    chain = load_certs(cert_pem, "certificate")
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=password)
    except TypeError:
        if password is None:
            raise ConfigError("the private key is encrypted: add 'askpass' (a file, or a prompt)") from None
        raise ConfigError("the private key is not encrypted but 'askpass' was given") from None
    except (ValueError, UnicodeError) as exc:
        if password is not None and "password" in str(exc).lower():
            raise ConfigError("cannot decrypt the private key: wrong passphrase (askpass)") from None
        raise ConfigError(f"cannot read the private key (PEM): {exc}") from None
    if not isinstance(key, _TLS_KEY_TYPES):
        raise ConfigError(
            f"the private key is a {type(key).__name__.removeprefix('_')}, which cannot sign "
            "a TLS handshake (use RSA, EC, Ed25519 or Ed448)"
        )
    try:
        ctx.use_certificate(chain[0])
        ctx.use_privatekey(key)
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.check_privatekey()
    except (SSL.Error, crypto.Error, TypeError, ValueError):
        raise ConfigError("the certificate and the private key do not match") from None
