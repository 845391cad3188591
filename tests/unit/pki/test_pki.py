"""`trivpn pki`: what init, client and revoke write, read back with cryptography, pyOpenSSL,
trivpn's own config parsers and (when installed) the openssl and openvpn commands."""

from __future__ import annotations

import datetime
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers.logstate import kept_logging
from helpers.require import in_ci
from OpenSSL import crypto

from trivpn import cli
from trivpn.controlchannel.wrap import StaticKey, TLSCryptV2ClientKey
from trivpn.errors import ConfigError
from trivpn.pki import keys, ops, store
from trivpn.profile.profile import load_profile
from trivpn.server.config import load_server_config


def _block(text: str, tag: str) -> str:
    return text.split(f"<{tag}>\n", 1)[1].split(f"</{tag}>", 1)[0]


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if in_ci():
            pytest.fail(f"CI=true and {tool} is not installed (.ci/run installs it)")
        pytest.skip(f"NOT RUN: {tool} is not installed")
    return path


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    ops.init(root, name="vpn.example.net")
    return root


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_init_files_are_private(pki: Path) -> None:
    ops.client(pki, "alice")
    modes = _modes(pki)
    assert modes.pop(".") == 0o700 and modes.pop("clients") == 0o700
    assert set(modes) >= {"ca.crt", "ca.key", "server.crt", "server.key", "tls-crypt.key",
                          "crl.pem", "server.conf", "index.txt", "settings.json", "clients/alice.ovpn"}
    assert modes.pop("crl.pem") == 0o644  # public; readable after a privilege drop (store.write)
    assert all(m == 0o600 for m in modes.values()), modes


def test_ca_and_server_certificates(pki: Path) -> None:
    ca = _cert((pki / "ca.crt").read_text())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    life = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert datetime.timedelta(days=3650) <= life <= datetime.timedelta(days=3651)
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"

    srv = _cert((pki / "server.crt").read_text())
    assert srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["vpn.example.net"]
    assert srv.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "vpn.example.net"
    srv.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key((pki / "server.key").read_bytes(), None)
    assert key.public_key() == srv.public_key()


def test_ip_name_goes_into_san_as_address(tmp_path: Path) -> None:
    ops.init(tmp_path / "p", name="203.0.113.7", curve="P-384")
    srv = _cert((tmp_path / "p" / "server.crt").read_text())
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["203.0.113.7"]
    pub = srv.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1"


def test_client_profile_is_inline_and_accepted_by_trivpn(pki: Path) -> None:
    issued = ops.client(pki, "alice", remote="192.0.2.1:443")
    text = issued.profile.read_text()
    assert issued.profile == pki / "clients" / "alice.ovpn"
    for line in ("client", "remote 192.0.2.1 443", "remote-cert-tls server",
                 "verify-x509-name vpn.example.net name"):
        assert line in text.splitlines()
    profile = load_profile(str(issued.profile))
    assert profile.warnings == []
    cert = _cert(_block(text, "cert"))
    assert cert.serial_number == issued.serial
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(_block(text, "key").encode(), None)
    assert key.public_key() == cert.public_key()
    assert StaticKey.from_text(_block(text, "tls-crypt")).data == StaticKey.from_text(
        (pki / "tls-crypt.key").read_text()).data
    assert "PRIVATE KEY" not in (pki / "ca.crt").read_text()
    ca_key_body = (pki / "ca.key").read_text().split("\n")[1]
    assert ca_key_body not in text  # the CA key never goes into a profile


def test_chain_verifies_with_pyopenssl_and_openssl(pki: Path) -> None:
    text = ops.client(pki, "alice").profile.read_text()
    store_ = crypto.X509Store()
    store_.add_cert(crypto.X509.from_cryptography(_cert((pki / "ca.crt").read_text())))
    for pem in (_block(text, "cert"), (pki / "server.crt").read_text()):
        crypto.X509StoreContext(store_, crypto.X509.from_cryptography(_cert(pem))).verify_certificate()
    openssl = _need("openssl")
    leaf = pki / "clients" / "alice.crt.tmp"
    leaf.write_text(_block(text, "cert"))
    for extra in ([], ["-crl_check", "-CRLfile", str(pki / "crl.pem")]):
        r = subprocess.run([openssl, "verify", *extra, "-CAfile", str(pki / "ca.crt"), str(leaf)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


def test_serials_are_random_and_index_records_them(pki: Path) -> None:
    a = ops.client(pki, "alice").serial
    b = ops.client(pki, "bob").serial
    assert a != b and a.bit_length() > 64 and b.bit_length() > 64
    rows = [ln.split("\t") for ln in (pki / "index.txt").read_text().splitlines() if not ln.startswith("#")]
    assert [(r[0], r[5], r[6]) for r in rows] == [
        ("V", "server", "vpn.example.net"), ("V", "client", "alice"), ("V", "client", "bob")]
    assert int(rows[1][1], 16) == a


def test_refuses_to_overwrite(pki: Path, tmp_path: Path) -> None:
    before = (pki / "ca.key").read_text()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        ops.init(pki, name="other.example.net")
    assert (pki / "ca.key").read_text() == before
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    ops.init(empty, name="x.example.net")
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700
    ops.client(pki, "alice")
    with pytest.raises(ConfigError, match="already has a valid certificate"):
        ops.client(pki, "alice")


def test_server_conf_is_what_trivpn_serve_reads(pki: Path) -> None:
    conf = load_server_config(str(pki / "server.conf"))
    assert conf.warnings == ()
    text = (pki / "server.conf").read_text().splitlines()
    for line in ("remote-cert-tls client", "crl-verify crl.pem", "topology subnet",
                 "keepalive 10 60", "status status.log 10",
                 "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
                 "server 10.8.0.0 255.255.255.0", f"cd {pki.resolve()}"):
        assert line in text


def test_revoke_writes_a_crl_signed_by_the_ca(pki: Path) -> None:
    alice = ops.client(pki, "alice").serial
    bob = ops.client(pki, "bob").serial
    empty = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert len(empty) == 0
    assert ops.revoke(pki, "alice") == [alice]
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    ca = _cert((pki / "ca.crt").read_text())
    ca_pub = ca.public_key()
    assert isinstance(ca_pub, ec.EllipticCurvePublicKey) and crl.is_signature_valid(ca_pub)
    assert crl.get_revoked_certificate_by_serial_number(alice) is not None
    assert crl.get_revoked_certificate_by_serial_number(bob) is None
    assert crl.next_update_utc is not None and crl.next_update_utc >= ca.not_valid_after_utc
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > x509.load_pem_x509_crl(empty.public_bytes(serialization.Encoding.PEM)).extensions \
        .get_extension_for_class(x509.CRLNumber).value.crl_number
    with pytest.raises(ConfigError, match="already revoked"):
        ops.revoke(pki, "alice")
    with pytest.raises(ConfigError, match="no client named"):
        ops.revoke(pki, "carol")
    again = ops.client(pki, "alice").serial  # a revoked name may be issued again
    assert again != alice
    assert stat.S_IMODE((pki / "crl.pem").stat().st_mode) == 0o644  # a revoke keeps it readable
    load_server_config(str(pki / "server.conf"))  # the new CRL still loads


def test_tls_crypt_v2_client_keys_unwrap_with_the_server_key(tmp_path: Path) -> None:
    root = tmp_path / "p"
    ops.init(root, name="vpn.example.net", tls_crypt_v2=True)
    assert "tls-crypt-v2 tls-crypt-v2-server.key" in (root / "server.conf").read_text()
    assert not (root / "tls-crypt.key").exists()
    server_key = keys.v2_server_key_bytes((root / "tls-crypt-v2-server.key").read_text())
    kcs = []
    for name in ("alice", "bob"):
        text = ops.client(root, name).profile.read_text()
        parsed = TLSCryptV2ClientKey.from_text(_block(text, "tls-crypt-v2"))
        kc, metadata = keys.unwrap_client_key(server_key, parsed.wkc)
        assert kc == parsed.key.data
        assert metadata[0] == keys.V2_METADATA_TIMESTAMP and len(metadata) == 9
        assert load_profile(str(root / "clients" / f"{name}.ovpn")).warnings == []
        kcs.append(kc)
    assert kcs[0] != kcs[1]  # one key per client
    with pytest.raises(ConfigError, match="tag"):
        keys.unwrap_client_key(bytes(128), TLSCryptV2ClientKey.from_text(
            _block((root / "clients" / "alice.ovpn").read_text(), "tls-crypt-v2")).wkc)


def test_tls_crypt_v2_layout_matches_openvpn(tmp_path: Path) -> None:
    """A client key made by Debian's openvpn from our server key unwraps with our code."""
    openvpn = _need("openvpn")
    server = tmp_path / "server.key"
    server.write_text(keys.v2_server_key_text())
    client = tmp_path / "client.key"
    r = subprocess.run([openvpn, "--tls-crypt-v2", str(server), "--genkey", "tls-crypt-v2-client",
                        str(client)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    blob = keys.v2_client_blob(client.read_text())
    kc, metadata = keys.unwrap_client_key(keys.v2_server_key_bytes(server.read_text()), blob[256:])
    assert kc == blob[:256] and metadata[0] == keys.V2_METADATA_TIMESTAMP


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "bad name"}, "not a host name"),
        ({"name": "x.net", "subnet": "10.8.0.0/30"}, "too small"),
        ({"name": "x.net", "subnet": "10.8.0.1/24"}, "host bits"),
        ({"name": "x.net", "curve": "P-521"}, "curve"),
        ({"name": "x.net", "port": 0}, "port"),
    ],
)
def test_bad_init_arguments(tmp_path: Path, kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        ops.init(tmp_path / "p", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("remote", "expect"),
    [(None, ("vpn.example.net", 1194)), ("h.example", ("h.example", 1194)),
     ("h.example:443", ("h.example", 443)), ("[2001:db8::1]:53", ("2001:db8::1", 53)),
     ("2001:db8::1", ("2001:db8::1", 1194))],
)
def test_parse_remote(remote: str | None, expect: tuple[str, int]) -> None:
    settings = store.Settings("vpn.example.net", 1194, "udp", "10.8.0.0/24", False, "P-256")
    assert ops.parse_remote(remote, settings) == expect


@pytest.mark.parametrize("name", ["", "../x", "-x", "a b", "x" * 65, ".hidden"])
def test_bad_client_names(pki: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="client name"):
        ops.client(pki, name)


@pytest.fixture
def _logging_kept() -> Iterator[None]:
    with kept_logging():
        yield


@pytest.mark.usefixtures("_logging_kept")
def test_cli_one_line_errors(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pki", "client", str(pki), "alice", "--remote", "h.example:99"]) == 0
    assert "alice.ovpn" in capsys.readouterr().out
    assert cli.main(["pki", "init", str(pki)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to overwrite" in err[0]
    assert cli.main(["pki", "revoke", str(pki), "alice"]) == 0
    out = capsys.readouterr().out
    # serve checks the CRL at every renegotiation: a connected client does not stay until it
    # reconnects (the message said so)
    assert "next renegotiation" in out and "stay until they reconnect" not in out
    assert cli.main(["pki", "client", str(pki.parent / "nope"), "x"]) == 1
    assert "missing" in capsys.readouterr().err
