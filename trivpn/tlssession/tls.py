"""One TLS connection driven over memory BIOs, for OpenVPN's control channel.

Why pyOpenSSL and not the stdlib `ssl` module: OpenVPN 2.6 derives the data-channel keys with
the TLS keying-material exporter (RFC 5705, label "EXPORTER-OpenVPN-datakeys") whenever the
client announces IV_PROTO bit 3, and the stdlib `ssl` module (3.11) has no way to export keying
material. pyOpenSSL exposes `Connection.export_keying_material` and memory BIOs
(`bio_write`/`bio_read` on a Connection created without a socket), which is all we need.

Theory of operation (the same ideas as the comment at the top of trio's `_ssl.py`):

* The engine never touches a socket. Ciphertext from the peer goes into OpenSSL's incoming
  memory BIO with `receive_ciphertext`; whatever OpenSSL wants to send accumulates in the
  outgoing BIO and is drained by `ciphertext_to_send`. The caller (the control channel) cuts
  it into P_CONTROL_V1 payloads; TLS records need not line up with packets.
* Every OpenSSL call that needs more input raises `WantReadError`. That is not an error here:
  it means "feed me more ciphertext", so we simply return and retry the same call the next
  time bytes arrive. With memory BIOs writes never block, so `WantWriteError` cannot happen.
* OpenVPN reads plaintext one SSL_read (= one TLS record) at a time, so every message we send
  must be exactly one record: `write` performs one SSL_write per call and refuses more than
  2048 bytes. Writes made before the handshake finishes are queued and flushed, in order, as
  soon as it does.
* Decrypted records are read eagerly in `receive_ciphertext` (so TLS alerts surface there as
  exceptions) and handed out, one item per SSL_read, by `read_records`.
* OpenVPN checks the peer certificate inside OpenSSL's verify callback; we do the same, so a
  chain error, a wrong EKU (remote-cert-tls) or a verify-x509-name mismatch aborts the
  handshake. The callback only records the reason; `receive_ciphertext` turns it into a
  FatalError that names the cause and the certificate subject.
* A new engine is made for every OpenVPN key_id: OpenVPN never uses TLS renegotiation, each
  key gets a brand-new TLS session.
"""

from __future__ import annotations

from dataclasses import field
from typing import NoReturn

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL, crypto

from trivpn import digests
from trivpn.errors import CertificateRejected, ConfigError, LocalProtocolError, RemoteProtocolError
from trivpn.records import dataclass
from trivpn.tlssession.tlsload import (
    CERT_PROFILES,
    common_name,
    crl_dir_check,
    format_subject,
    load_certs,
    load_identity,
    peer_common_name,
    restrict,
)

__all__ = ["CERT_PROFILES", "TLS_CHANNEL_BUF_SIZE", "TLS_USERNAME_LEN", "TLSConfig", "TLSEngine", "common_name", "format_subject"]

#: OpenVPN reads TLS plaintext into a buffer of this size, one record at a time (common.h).
TLS_CHANNEL_BUF_SIZE = 2048
#: OpenVPN's limit on a certificate's common name, in UTF-8 bytes (ssl_verify.c)
TLS_USERNAME_LEN = 64
#: Largest TLS plaintext record; one SSL_read never returns more.
_MAX_RECORD = 16384

_TLS_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_REMOTE_CERT_TLS = {
    "server": (ExtendedKeyUsageOID.SERVER_AUTH, "TLS Web Server Authentication"),
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH, "TLS Web Client Authentication"),
}
_X509_NAME_TYPES = ("subject", "name", "name-prefix")

# Fallback texts for the X509_V_ERR_* codes a VPN user actually meets (x509_vfy.h); used only
# if OpenSSL's own message table is not reachable through pyOpenSSL's bindings.
#: X509_V_ERR_UNABLE_TO_GET_CRL: what every peer gets while the CRL is `crl.UNUSABLE_CRL`
_UNABLE_TO_GET_CRL = 3
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    3: "unable to get certificate CRL",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}

# TLS alerts meaning "the peer did not accept our certificate".
_CERT_ALERTS = (
    "bad certificate",
    "unsupported certificate",
    "certificate revoked",
    "certificate expired",
    "certificate unknown",
    "certificate required",
    "unknown ca",
    "access denied",
)

@dataclass(frozen=True, slots=True)
class TLSConfig:
    """Certificates and peer checks for one side of the control channel."""

    ca_pem: str
    cert_pem: str | None = None
    key_pem: str | None = field(default=None, repr=False)  # a secret: never in a log
    is_server: bool = False
    remote_cert_tls: str | None = None
    verify_x509_name: tuple[str, str] | None = None
    tls_version_min: str = "1.2"
    tls_version_max: str | None = None  # OpenVPN's --tls-version-max; None = what OpenSSL offers
    #: crl-verify: a PEM CRL signed by the CA, checked for the peer; `crl.UNUSABLE_CRL` ("")
    #: checks with no CRL at all, so every peer certificate fails (the CRL file is unreadable)
    crl_pem: str | None = None
    #: crl-verify DIR dir: a file named after the peer's decimal serial there means revoked
    crl_dir: str | None = None
    #: peer-fingerprint: SHA-256 digests of acceptable peer certificates (then no CA is needed)
    peer_fingerprints: tuple[bytes, ...] = ()
    cipher_list: str | None = None  # tls-cipher (TLS 1.2 and below, OpenSSL syntax)
    ciphersuites: str | None = None  # tls-ciphersuites (TLS 1.3)
    groups: str | None = None  # tls-groups: key-exchange groups, colon separated
    #: tls-cert-profile as an OpenSSL security level (legacy 1, preferred 2, suiteb 3)
    security_level: int | None = None
    #: the private key's passphrase (askpass); a secret
    key_password: bytes | None = field(default=None, repr=False)
    #: server: verify-client-cert none (no certificate asked) | optional | require
    verify_client_cert: str = "require"


def _verify_error_text(errnum: int) -> str:
    try:  # pyOpenSSL's private bindings expose OpenSSL's own table; fall back quietly
        from OpenSSL._util import ffi, lib

        return str(ffi.string(lib.X509_verify_cert_error_string(errnum)).decode())
    except Exception:
        return _VERIFY_ERRORS.get(errnum, f"X509 verify error {errnum}")


def _check_config(config: TLSConfig) -> None:
    if config.verify_client_cert not in ("none", "optional", "require"):
        raise ConfigError(f"verify-client-cert {config.verify_client_cert!r} is not none, optional or require")
    if config.tls_version_min not in _TLS_VERSIONS:
        raise ConfigError(
            f"tls-version-min {config.tls_version_min!r} is not supported (use 1.2 or 1.3)"
        )
    if config.tls_version_max is not None and config.tls_version_max not in _TLS_VERSIONS:
        raise ConfigError(
            f"tls-version-max {config.tls_version_max!r} is not supported (use 1.2 or 1.3)"
        )
    if (
        config.tls_version_max is not None
        and _TLS_VERSIONS[config.tls_version_max] < _TLS_VERSIONS[config.tls_version_min]
    ):
        raise ConfigError("tls-version-max is lower than tls-version-min")
    if config.remote_cert_tls is not None and config.remote_cert_tls not in _REMOTE_CERT_TLS:
        raise ConfigError(
            f"remote-cert-tls must be 'server' or 'client', not {config.remote_cert_tls!r}"
        )
    if config.verify_x509_name is not None:
        if config.verify_x509_name[1] not in _X509_NAME_TYPES:
            raise ConfigError(
                f"verify-x509-name type {config.verify_x509_name[1]!r} is not one of "
                "subject, name, name-prefix"
            )
    if (config.cert_pem is None) != (config.key_pem is None):
        raise ConfigError("cert and key must be given together")
    if config.is_server and config.cert_pem is None:
        raise ConfigError("a TLS server needs a cert and a key")


class TLSEngine:
    """One TLS connection over memory BIOs (a new one per OpenVPN key_id)."""

    def __init__(self, config: TLSConfig) -> None:
        _check_config(config)
        self.config = config
        self.handshake_done = False
        self.peer_subject: str | None = None
        #: the peer certificate's last CN, remapped to printable ASCII (`peer_common_name`)
        self.peer_common_name = ""
        #: the verified peer chain as DER, leaf first (server scripts' tls_*/X509_* variables)
        self.peer_chain: tuple[bytes, ...] = ()
        self.tls_version: str | None = None
        self.cipher_name: str | None = None
        self._peer_role = "client" if config.is_server else "server"
        self._verify_failure: str | None = None
        self._pending_writes: list[bytes] = []
        self._records: list[bytes] = []
        self._failed: str | None = None
        self._started = False

        self._conn = SSL.Connection(_context_for(config), None)
        self._conn.set_app_data(self)
        if config.is_server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()

    # -- verification -------------------------------------------------------------------------

    def _verify_callback(
        self, conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int
    ) -> bool:
        """Called by OpenSSL for every certificate in the chain; must never raise.

        pyOpenSSL re-raises an exception from here out of the handshake call, which would
        crash the session instead of refusing the peer; so anything unexpected — above all
        a certificate we cannot parse — fails verification."""
        try:
            return self._verify(cert, errnum, depth, ok)
        except Exception as exc:
            self._verify_failure = f"the certificate could not be checked ({type(exc).__name__})"
            return False

    def _verify(self, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
        try:
            xcert = cert.to_cryptography()
        except Exception:
            self._verify_failure = f"certificate at depth {depth} cannot be parsed"
            return False
        try:
            subject = format_subject(xcert.subject)
        except Exception:
            subject = "?"
        if self.config.peer_fingerprints:  # PKI-less: only the leaf's digest counts
            if depth != 0:
                return True
            der = xcert.public_bytes(serialization.Encoding.DER)
            if digests.digest("sha256", der) not in self.config.peer_fingerprints:
                self._verify_failure = f"peer-fingerprint does not match (subject {subject})"
                return False
            return True
        if not ok:
            text = _verify_error_text(errnum)
            if errnum == _UNABLE_TO_GET_CRL and self.config.crl_pem == "":  # crl.UNUSABLE_CRL
                text += " (the crl-verify file cannot be used)"  # say why, not only OpenSSL's words
            self._verify_failure = f"{text} (subject {subject})"
            return False
        if depth != 0:
            return True
        problem = self._check_leaf(xcert, subject) or crl_dir_check(self.config.crl_dir, xcert)
        if problem is not None:
            self._verify_failure = f"{problem} (subject {subject})"
            return False
        return True

    def _check_leaf(self, cert: x509.Certificate, subject: str) -> str | None:
        """The checks OpenVPN adds on the peer's own certificate; a reason, or None if fine."""
        cfg = self.config
        if len(common_name(cert.subject).encode("utf-8")) > TLS_USERNAME_LEN:
            # OpenVPN's CN buffer (TLS_USERNAME_LEN): a longer one fails verify_cert with
            # "could not extract CN ... the field length is limited to 64 characters"
            return f"the common name is longer than {TLS_USERNAME_LEN} bytes (OpenVPN's limit)"
        if cfg.remote_cert_tls is not None:
            oid, text = _REMOTE_CERT_TLS[cfg.remote_cert_tls]
            # remote-cert-tls means "key usage present" plus the EKU (OpenVPN's KU_REQUIRED).
            try:
                cert.extensions.get_extension_for_class(x509.KeyUsage)
            except x509.ExtensionNotFound:
                return f"remote-cert-tls {cfg.remote_cert_tls}: no key usage extension"
            except ValueError:
                return f"remote-cert-tls {cfg.remote_cert_tls}: unreadable extensions"
            try:
                eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            except x509.ExtensionNotFound:
                return f"remote-cert-tls {cfg.remote_cert_tls}: no extended key usage extension"
            except ValueError:
                return f"remote-cert-tls {cfg.remote_cert_tls}: unreadable extensions"
            if oid not in eku:
                return f"remote-cert-tls {cfg.remote_cert_tls}: extended key usage lacks {text}"
        if cfg.verify_x509_name is not None:
            name, kind = cfg.verify_x509_name
            cn = common_name(cert.subject)
            if kind == "subject":
                matched = subject == name
            elif kind == "name":
                matched = cn == name
            else:
                matched = cn.startswith(name)
            if not matched:
                return f"verify-x509-name {kind} {name!r} does not match"
        return None

    # -- driving ------------------------------------------------------------------------------

    def start(self) -> None:
        """Client: produce the ClientHello. A server engine just waits for one."""
        if self._started:
            raise LocalProtocolError("TLSEngine.start called twice")
        self._started = True
        if not self.config.is_server:
            self._handshake()

    def receive_ciphertext(self, data: bytes) -> None:
        """Feed TLS bytes from the peer; drives the handshake and decrypts what it can."""
        if self._failed is not None:
            raise RemoteProtocolError(f"TLS connection already failed: {self._failed}")
        if data:
            self._conn.bio_write(data)
        if not self.handshake_done:
            self._handshake()
            if not self.handshake_done:
                return
        self._read_all()

    def _handshake(self) -> None:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return
        except SSL.Error as exc:
            self._fail(exc)
        self.handshake_done = True
        peer = self._conn.get_peer_certificate(as_cryptography=True)
        self.peer_subject = format_subject(peer.subject) if peer is not None else ""
        self.peer_common_name = peer_common_name(peer.subject) if peer is not None else ""
        chain = self._conn.get_verified_chain(as_cryptography=True) if peer is not None else None
        if not chain and peer is not None:  # peer-fingerprint: no CA, no chain; the leaf only
            chain = [peer]
        self.peer_chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain or ())
        self.tls_version = self._conn.get_protocol_version_name()
        self.cipher_name = self._conn.get_cipher_name()
        pending, self._pending_writes = self._pending_writes, []
        for record in pending:
            self._write_record(record)

    def _read_all(self) -> None:
        while True:
            try:
                record = self._conn.recv(_MAX_RECORD)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self._failed = "the peer closed the TLS session"
                raise RemoteProtocolError(self._failed) from None
            except SSL.Error as exc:
                self._fail(exc)
            if record:
                self._records.append(record)

    def _fail(self, exc: SSL.Error) -> NoReturn:
        reason = _ssl_error_text(exc)
        if self._verify_failure is not None:
            self._failed = (
                f"{self._peer_role} certificate verification failed: {self._verify_failure}"
            )
            raise CertificateRejected(self._failed) from None
        if "did not return a certificate" in reason:
            self._failed = f"the {self._peer_role} sent no certificate ({reason})"
            raise CertificateRejected(self._failed) from None
        if any(alert in reason for alert in _CERT_ALERTS):
            self._failed = f"the {self._peer_role} rejected our certificate (TLS alert: {reason})"
            raise CertificateRejected(self._failed) from None
        self._failed = f"TLS error: {reason}"
        raise RemoteProtocolError(self._failed) from None

    @property
    def failed(self) -> bool:
        """True once the TLS connection hit a fatal error; it cannot be used any more."""
        return self._failed is not None

    def ciphertext_to_send(self) -> bytes:
        """Everything OpenSSL has queued for the peer (b"" when nothing)."""
        chunks = []
        while True:
            try:
                chunk = self._conn.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def write(self, plaintext: bytes) -> None:
        """Send one TLS record; queued until the handshake completes."""
        if not plaintext:
            raise LocalProtocolError("refusing to write an empty TLS record")
        if len(plaintext) > TLS_CHANNEL_BUF_SIZE:
            raise LocalProtocolError(
                f"TLS record of {len(plaintext)} bytes exceeds OpenVPN's {TLS_CHANNEL_BUF_SIZE}"
            )
        if self._failed is not None:
            raise LocalProtocolError(f"TLS connection has failed: {self._failed}")
        if not self.handshake_done:
            self._pending_writes.append(bytes(plaintext))
            return
        self._write_record(plaintext)

    def _write_record(self, plaintext: bytes) -> None:
        try:
            sent = self._conn.send(plaintext)
        except SSL.Error as exc:
            self._fail(exc)
        if sent != len(plaintext):  # cannot happen with memory BIOs; guard the invariant
            raise LocalProtocolError("OpenSSL accepted only part of a record")

    def read_records(self) -> list[bytes]:
        """Decrypted records received so far (drains), one item per SSL_read."""
        records, self._records = self._records, []
        return records

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        """RFC 5705 exporter without context (OpenVPN's use_context=0)."""
        if not self.handshake_done:
            raise LocalProtocolError("keying material is only available after the handshake")
        try:
            return self._conn.export_keying_material(label, length)
        except SSL.Error as exc:
            raise LocalProtocolError(f"keying material export failed: {exc}") from None


def _ssl_error_text(exc: SSL.Error) -> str:
    """A short text from pyOpenSSL's error list [(lib, func, reason), ...]."""
    args = exc.args[0] if exc.args else None
    if isinstance(args, list) and args:
        parts = []
        for item in args:
            if isinstance(item, tuple) and item:
                parts.append(str(item[-1]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(exc) or type(exc).__name__


#: Contexts shared by every engine with an equal configuration. A server makes one engine per
#: client and key_id; building a context each time parsed the CA, certificate and key again
#: and kept a private copy of each (docs/performance.md, `bench server`: RSS per idle client).
_CONTEXTS: dict[TLSConfig, SSL.Context] = {}
#: Configurations kept at once (a changed CRL makes a new one; old ones age out).
_CONTEXT_CACHE_SIZE = 8


def _context_for(config: TLSConfig) -> SSL.Context:
    ctx = _CONTEXTS.get(config)
    if ctx is None:
        ctx = _build_context(config)
        if len(_CONTEXTS) >= _CONTEXT_CACHE_SIZE:
            _CONTEXTS.pop(next(iter(_CONTEXTS)))
        _CONTEXTS[config] = ctx
    return ctx


def _shared_verify(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int, ok: int) -> bool:
    """The context's verify callback: hand the call to the engine that owns `conn`."""
    engine = conn.get_app_data()
    if not isinstance(engine, TLSEngine):
        return False
    return engine._verify_callback(conn, cert, errnum, depth, ok)


def _build_context(config: TLSConfig) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(_TLS_VERSIONS[config.tls_version_min])
    if config.tls_version_max is not None:
        ctx.set_max_proto_version(_TLS_VERSIONS[config.tls_version_max])
    # As OpenVPN does: no tickets, no renegotiation, no session cache; every key_id gets
    # a fresh full handshake.
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_COMPRESSION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    # Idle sessions (a server holds one per client) give their 16 KiB read/write buffers back.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    restrict(ctx, config)
    store = ctx.get_cert_store()
    assert store is not None
    if not config.ca_pem and config.peer_fingerprints:
        if config.cert_pem is not None and config.key_pem is not None:
            load_identity(ctx, config.cert_pem, config.key_pem, config.key_password)
        ctx.set_verify(SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if config.is_server else 0),
                       _shared_verify)
        return ctx
    cas = load_certs(config.ca_pem, "CA certificate")
    for ca in cas:
        try:
            store.add_cert(crypto.X509.from_cryptography(ca))
        except crypto.Error:
            pass  # the same CA twice in the bundle
    if config.crl_pem is not None:  # revocation of the peer's own certificate, as OpenVPN
        from trivpn.tlssession.crl import load_crl  # crl-verify only (start-up time of the rest)

        if config.crl_pem:  # else UNUSABLE_CRL: "unable to get certificate CRL" for every peer
            store.add_crl(load_crl(config.crl_pem, cas))
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    if config.cert_pem is not None and config.key_pem is not None:
        load_identity(ctx, config.cert_pem, config.key_pem, config.key_password)
    mode = SSL.VERIFY_PEER
    if config.is_server and config.verify_client_cert == "none":
        mode = SSL.VERIFY_NONE  # no CertificateRequest: the password script decides
    elif config.is_server and config.verify_client_cert == "require":
        mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
    ctx.set_verify(mode, _shared_verify)
    return ctx
