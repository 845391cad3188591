"""The client's TLS options: peer-fingerprint, crl-verify dir, tls-cipher & co, askpass."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trivpn.errors import ConfigError, FatalError, RemoteProtocolError
from trivpn.profile.profile import load_profile, parse_profile
from trivpn.session.config import server_check_warning, tls_config_from
from trivpn.testing.pki import PKI, generate_pki, with_client
from trivpn.tlssession.tls import TLSConfig, TLSEngine

PKI_ = generate_pki()


def _der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def _fp(pem: str) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(_der(pem)).digest())


def server(pki: PKI = PKI_, **kw: object) -> TLSEngine:
    return TLSEngine(TLSConfig(pki.ca_cert, pki.server_cert, pki.server_key, is_server=True, **kw))  # type: ignore[arg-type]  # test knobs


def client(pki: PKI = PKI_, **kw: object) -> TLSEngine:
    args: dict[str, object] = {"ca_pem": pki.ca_cert, "cert_pem": pki.client_cert, "key_pem": pki.client_key}
    args.update(kw)
    return TLSEngine(TLSConfig(**args))  # type: ignore[arg-type]  # test knobs


def handshake(c: TLSEngine, s: TLSEngine) -> None:
    c.start()
    s.start()
    for _ in range(20):
        moved = False
        for src, dst in ((c, s), (s, c)):
            data = src.ciphertext_to_send()
            if data:
                moved = True
                dst.receive_ciphertext(data)
        if not moved:
            break
    assert c.handshake_done and s.handshake_done


def test_peer_fingerprint_without_a_ca() -> None:
    good = hashlib.sha256(_der(PKI_.server_cert)).digest()
    c = client(ca_pem="", peer_fingerprints=(good,))
    handshake(c, server())
    assert c.peer_chain[0] == _der(PKI_.server_cert)
    with pytest.raises(FatalError, match="peer-fingerprint does not match"):
        handshake(client(ca_pem="", peer_fingerprints=(b"\0" * 32,)), server())


def test_peer_fingerprint_profile_inline_block_and_no_ca(tmp_path: Path) -> None:
    other = "AB:" * 31 + "CD"
    text = (f"client\ndev tun\nremote a\n<peer-fingerprint>\n{other}\n{_fp(PKI_.server_cert)}\n</peer-fingerprint>\n"
            f"<cert>\n{PKI_.client_cert}</cert>\n<key>\n{PKI_.client_key}</key>\n")
    p = parse_profile(text)
    assert p.ca is None and len(p.peer_fingerprints) == 2
    assert server_check_warning(p) is None
    handshake(TLSEngine(tls_config_from(p)), server())
    with pytest.raises(ConfigError, match="SHA-256 fingerprint"):
        parse_profile("client\ndev tun\nremote a\npeer-fingerprint AB:CD\n")


def test_crl_verify_dir(tmp_path: Path) -> None:
    handshake(client(crl_dir=str(tmp_path)), server())
    serial = x509.load_pem_x509_certificate(PKI_.server_cert.encode()).serial_number
    (tmp_path / str(serial)).write_text("")
    with pytest.raises(FatalError, match="revoked"):
        handshake(client(crl_dir=str(tmp_path)), server())
    p = parse_profile(f"client\ndev tun\nremote a\n<ca>\n{PKI_.ca_cert}</ca>\ncrl-verify {tmp_path} dir\n")
    assert p.crl_dir == str(tmp_path)


def test_tls_cipher_ciphersuites_and_version_max() -> None:
    c = client(tls_version_max="1.2", cipher_list="ECDHE-ECDSA-AES128-GCM-SHA256")
    handshake(c, server())
    assert c.tls_version == "TLSv1.2" and c.cipher_name == "ECDHE-ECDSA-AES128-GCM-SHA256"
    c = client(ciphersuites="TLS_CHACHA20_POLY1305_SHA256")
    handshake(c, server())
    assert c.tls_version == "TLSv1.3" and c.cipher_name == "TLS_CHACHA20_POLY1305_SHA256"
    with pytest.raises(ConfigError, match="TLS ciphers"):
        client(cipher_list="NO-SUCH-CIPHER")


def test_tls_groups() -> None:
    handshake(client(groups="P-384:X25519"), server())
    with pytest.raises(RemoteProtocolError):
        handshake(client(groups="X448"), server(groups="P-256"))
    with pytest.raises(ConfigError, match="tls-groups"):
        client(groups="no-such-group")


def test_profile_tls_options_map_to_the_config() -> None:
    p = parse_profile(
        f"client\ndev tun\nremote a\n<ca>\n{PKI_.ca_cert}</ca>\nremote-cert-tls server\n"
        f"<cert>\n{PKI_.client_cert}</cert>\n<key>\n{PKI_.client_key}</key>\n"
        "tls-version-min 1.4 or-highest\ntls-version-max 1.3\ntls-cipher DEFAULT\n"
        "tls-ciphersuites TLS_AES_256_GCM_SHA384\ntls-groups X25519:P-256\ntls-cert-profile suiteb\n"
    )
    cfg = tls_config_from(p)
    assert (cfg.tls_version_min, cfg.tls_version_max, cfg.security_level) == ("1.3", "1.3", 3)
    assert (cfg.cipher_list, cfg.ciphersuites, cfg.groups) == ("DEFAULT", "TLS_AES_256_GCM_SHA384", "X25519:P-256")
    handshake(TLSEngine(cfg), server())  # EC P-256 keys pass the suiteb level
    assert tls_config_from(parse_profile(
        f"client\ndev tun\nremote a\n<ca>\n{PKI_.ca_cert}</ca>\ntls-version-min 1.0\n")).tls_version_min == "1.2"
    for bad in ("tls-cert-profile strongest", "tls-version-max 1.4", "tls-version-min 1.4"):
        with pytest.raises(ConfigError):
            parse_profile(f"client\ndev tun\nremote a\n<ca>\n{PKI_.ca_cert}</ca>\n{bad}\n")


def test_no_server_check_warns() -> None:
    p = parse_profile(f"client\ndev tun\nremote a\n<ca>\n{PKI_.ca_cert}</ca>\n")
    assert "remote-cert-tls server" in (server_check_warning(p) or "")
    p.verify_x509_name = ("server", "name")
    assert server_check_warning(p) is None


def _encrypted_key(password: bytes) -> str:
    key = serialization.load_pem_private_key(PKI_.client_key.encode(), password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(password)).decode()


def test_askpass_file_decrypts_the_key(tmp_path: Path) -> None:
    (tmp_path / "client.key").write_text(_encrypted_key(b"open sesame"))
    (tmp_path / "client.key").chmod(0o600)
    (tmp_path / "pass").write_text("open sesame\n")
    (tmp_path / "pass").chmod(0o600)
    base = f"client\ndev tun\nremote a\n<ca>\n{PKI_.ca_cert}</ca>\n<cert>\n{PKI_.client_cert}</cert>\nkey client.key\n"
    (tmp_path / "ok.ovpn").write_text(base + "askpass pass\n")
    p = load_profile(tmp_path / "ok.ovpn")
    assert p.warnings == [] and "open sesame" not in repr(p)
    handshake(TLSEngine(tls_config_from(p)), server())
    (tmp_path / "pass").write_text("wrong\n")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        TLSEngine(tls_config_from(load_profile(tmp_path / "ok.ovpn")))
    (tmp_path / "none.ovpn").write_text(base)
    with pytest.raises(ConfigError, match="askpass"):
        TLSEngine(tls_config_from(load_profile(tmp_path / "none.ovpn")))
    (tmp_path / "prompt.ovpn").write_text(base + "askpass\n")
    assert load_profile(tmp_path / "prompt.ovpn").askpass is True


def test_key_file_readable_by_others_warns(tmp_path: Path) -> None:
    (tmp_path / "client.key").write_text(PKI_.client_key)
    (tmp_path / "client.key").chmod(0o644)
    (tmp_path / "c.ovpn").write_text(
        f"client\ndev tun\nremote a\n<ca>\n{PKI_.ca_cert}</ca>\n<cert>\n{PKI_.client_cert}</cert>\nkey client.key\n")
    assert any("'key'" in w and "readable by group or others" in w for w in load_profile(tmp_path / "c.ovpn").warnings)
    (tmp_path / "client.key").chmod(0o600)
    (tmp_path / "up.txt").write_text("alice\npw\n")
    (tmp_path / "up.txt").chmod(0o640)
    (tmp_path / "c.ovpn").write_text((tmp_path / "c.ovpn").read_text() + "auth-user-pass up.txt\n")
    warnings = load_profile(tmp_path / "c.ovpn").warnings
    assert len(warnings) == 1 and "'auth-user-pass'" in warnings[0] and "mode 640" in warnings[0]


@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")  # cryptography on the long CNs
@pytest.mark.parametrize(("cn", "refused"), [("a" * 64, False), ("a" * 65, True), ("é" * 32, False), ("é" * 33, True)])
def test_a_common_name_over_64_utf8_bytes_is_refused(cn: str, refused: bool) -> None:
    """OpenVPN 2.6 copies the CN into a 64-byte buffer (TLS_USERNAME_LEN) and fails a peer
    whose CN does not fit: 65 ASCII bytes, or 33 two-byte characters (66 bytes), are
    refused; 64 bytes pass. Before, any length was accepted."""
    pki = with_client(PKI_, cn)
    s = server(pki)
    if not refused:
        handshake(client(pki), s)
        assert s.peer_common_name == cn
        return
    with pytest.raises(FatalError, match="client certificate verification failed: the common name is longer than 64 bytes"):
        handshake(client(pki), s)
