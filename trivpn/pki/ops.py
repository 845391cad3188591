"""`trivpn pki init | client | revoke`: the three operations, on a PKI directory.

Synchronous and file-bound on purpose (they run once, from the command line, in a worker
thread); `now` is a parameter so tests can pin dates.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from trivpn.errors import ConfigError
from trivpn.pki import configs, keys, store
from trivpn.pki.store import Entry, Settings, Store
from trivpn.records import dataclass

DEFAULT_PORT = 1194


@dataclass(frozen=True, slots=True)
class Issued:
    """What `client` made: the profile's path and the certificate's serial."""

    profile: Path
    serial: int


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def init(
    root: Path,
    *,
    name: str,
    tls_crypt_v2: bool = False,
    subnet: str = "10.8.0.0/24",
    port: int = DEFAULT_PORT,
    proto: str = "udp",
    curve: str = "P-256",
    now: datetime.datetime | None = None,
) -> Settings:
    """Make the CA, the server certificate, the control-channel key, an empty CRL and
    server.conf in a new directory `root`."""
    now = now or _now()
    store.check_host(name, "--name")
    if len(name) > keys.CN_MAX:
        raise ConfigError(f"--name {name[:70]!r}: longer than a certificate's name may be ({keys.CN_MAX} characters)")
    configs.server_network(subnet)
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: must be 1..65535")
    if proto not in ("udp", "tcp"):
        raise ConfigError(f"--proto {proto!r}: udp or tcp")
    keys.new_key(curve)  # checks the curve name before anything is written
    settings = Settings(
        name=name,
        port=port,
        proto="tcp-server" if proto == "tcp" else "udp",
        subnet=subnet,
        tls_crypt_v2=tls_crypt_v2,
        curve=curve,
    )
    st = Store(root)
    st.create()
    with st.locked():
        st.claim()
        ca_cert, ca_key = keys.make_ca(f"trivpn CA for {name}"[:64], curve, now)
        st.write(store.CA_KEY, keys.key_pem(ca_key), new=True)
        st.write(store.CA_CERT, keys.cert_pem(ca_cert), new=True)
        cert, key = keys.make_leaf(name, ca_cert, ca_key, now, server=True)
        st.write(store.SERVER_KEY, keys.key_pem(key), new=True)
        st.write(store.SERVER_CERT, keys.cert_pem(cert), new=True)
        if tls_crypt_v2:
            st.write(store.V2_SERVER_KEY, keys.v2_server_key_text(), new=True)
        else:
            st.write(store.TLS_CRYPT_KEY, keys.static_key_text(), new=True)
        st.write(store.CRL, keys.make_crl(ca_cert, ca_key, [], 1, now), new=True)
        st.save_settings(settings)
        entry = Entry("V", cert.serial_number, store.stamp(now), store.stamp(cert.not_valid_after_utc), "-", "server", name)
        st.save_entries([entry])
        st.write(store.SERVER_CONF, configs.server_conf(root.resolve(), settings, store.stamp(now)), new=True)
    return settings


def _ca(st: Store) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(st.read(store.CA_CERT).encode("ascii"))
    except ValueError:
        raise ConfigError(f"{st.root / store.CA_CERT} is not a certificate") from None
    try:
        key = keys.load_key(st.read(store.CA_KEY))
    except ValueError:
        raise ConfigError(f"{st.root / store.CA_KEY} is not a private key") from None
    return cert, key


def parse_remote(text: str | None, settings: Settings) -> tuple[str, int]:
    """HOST, HOST:PORT or [IPv6]:PORT; the defaults are init's name and port."""
    if not text:
        return store.check_host(settings.name, "the server's name (init's --name; give --remote)"), settings.port
    host, port = text, str(settings.port)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"--remote {text[:60]!r}: use HOST, HOST:PORT or [IPv6]:PORT")
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--remote {text[:60]!r}: the port must be 1..65535")
    return store.check_host(host, "--remote"), int(port)


def client(
    root: Path, name: str, *, remote: str | None = None, now: datetime.datetime | None = None
) -> Issued:
    """Issue a client certificate for `name` and write DIR/clients/NAME.ovpn."""
    now = now or _now()
    st = Store(root)
    store.check_name(name)
    settings = st.settings()  # fixed at init; read first so a stray DIR gets no lock file
    where = parse_remote(remote, settings)
    with st.locked():
        return _issue(st, name, settings, where, now)


def _issue(st: Store, name: str, settings: Settings, where: tuple[str, int], now: datetime.datetime) -> Issued:
    """`client`'s read-modify-write of index.txt, under DIR's lock."""
    entries = st.entries()
    if name == settings.name or any(e.name == name and e.kind == "server" for e in entries):
        # not "revoke it first": revoke handles clients only, and the server keeps its name
        raise ConfigError(f"{name!r} is the server's name (its certificate's); a client needs a name of its own")
    if any(e.name == name and e.status == "V" for e in entries):
        raise ConfigError(f"{name!r} already has a valid certificate; revoke it first to issue a new one")
    ca_cert, ca_key = _ca(st)
    cert, key = keys.make_leaf(name, ca_cert, ca_key, now, server=False)
    if settings.tls_crypt_v2:
        wrap = keys.v2_client_key_text(keys.v2_server_key_bytes(st.read(store.V2_SERVER_KEY)), now)
    else:
        wrap = st.read(store.TLS_CRYPT_KEY)
    text = configs.client_profile(
        name,
        settings,
        where,
        ca=keys.cert_pem(ca_cert),
        cert=keys.cert_pem(cert),
        key=keys.key_pem(key),
        wrap_key=wrap,
        made=store.stamp(now),
    )
    entries.append(
        Entry("V", cert.serial_number, store.stamp(now), store.stamp(cert.not_valid_after_utc), "-", "client", name)
    )
    # the index first: a profile whose certificate is not on record could never be revoked
    st.save_entries(entries)
    path = st.write(f"{store.CLIENTS}/{name}.ovpn", text)
    return Issued(path, cert.serial_number)


def revoke(root: Path, name: str, *, now: datetime.datetime | None = None) -> list[int]:
    """Revoke every valid client certificate of `name`; rewrite crl.pem. Returns the serials."""
    now = now or _now()
    st = Store(root)
    store.check_name(name)
    st.read(store.INDEX)  # is DIR a PKI at all (before a lock file is made in it)
    with st.locked():
        return _revoke(st, name, now)


def _revoke(st: Store, name: str, now: datetime.datetime) -> list[int]:
    """`revoke`'s read-modify-write of index.txt and crl.pem, under DIR's lock."""
    entries = st.entries()
    hits = [e for e in entries if e.name == name and e.kind == "client" and e.status == "V"]
    if not hits:
        if any(e.name == name and e.kind == "server" for e in entries):
            raise ConfigError(f"{name!r} is the server's certificate, not a client's; 'pki revoke' revokes clients")
        known = any(e.name == name and e.kind == "client" for e in entries)
        raise ConfigError(f"{name!r} is already revoked" if known else f"no client named {name!r} in {st.root}")
    for e in hits:
        e.status, e.revoked = "R", store.stamp(now)
    ca_cert, ca_key = _ca(st)
    revoked = [(e.serial, store.parse_stamp(e.revoked)) for e in entries if e.status == "R"]
    number = sum(1 for e in entries if e.status == "R") + 1
    st.write(store.CRL, keys.make_crl(ca_cert, ca_key, revoked, number, now))
    st.save_entries(entries)
    return [e.serial for e in hits]
