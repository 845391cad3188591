"""verify-client-cert on the TLS server: require (default), optional, none — and the
verified chain the server keeps for its scripts' tls_*/X509_* variables."""

from __future__ import annotations

from dataclasses import replace

import pytest
from cryptography import x509
from helpers.profiles import shared_pki

from trivpn.errors import ConfigError, FatalError
from trivpn.tlssession.tls import TLSConfig, TLSEngine


def _pair(mode: str, *, client_cert: bool) -> tuple[TLSEngine, TLSEngine]:
    pki = shared_pki()
    server = TLSEngine(TLSConfig(pki.ca_cert, pki.server_cert, pki.server_key, is_server=True,
                                 verify_client_cert=mode))
    client_cfg = TLSConfig(pki.ca_cert, pki.client_cert, pki.client_key)
    if not client_cert:
        client_cfg = replace(client_cfg, cert_pem=None, key_pem=None)
    return server, TLSEngine(client_cfg)


def _handshake(server: TLSEngine, client: TLSEngine) -> None:
    client.start()
    server.start()
    for _ in range(20):
        moved = False
        for src, dst in ((client, server), (server, client)):
            data = src.ciphertext_to_send()
            if data:
                moved = True
                dst.receive_ciphertext(data)
        if not moved:
            break
    assert server.handshake_done and client.handshake_done


@pytest.mark.parametrize("mode", ["none", "optional"])
def test_a_client_without_certificate_is_let_through_to_the_password_check(mode: str) -> None:
    server, client = _pair(mode, client_cert=False)
    _handshake(server, client)
    assert server.peer_subject == "" and server.peer_chain == ()


def test_require_refuses_a_client_without_certificate() -> None:
    server, client = _pair("require", client_cert=False)
    with pytest.raises(FatalError):
        _handshake(server, client)


def test_optional_still_verifies_a_certificate_and_keeps_the_chain() -> None:
    server, client = _pair("optional", client_cert=True)
    _handshake(server, client)
    leaf, ca = (x509.load_der_x509_certificate(der) for der in server.peer_chain)
    assert "CN=" in (server.peer_subject or "") and leaf.issuer == ca.subject


def test_none_does_not_even_ask_for_the_certificate() -> None:
    server, client = _pair("none", client_cert=True)
    _handshake(server, client)
    assert server.peer_subject == "" and server.peer_chain == ()


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="verify-client-cert"):
        _pair("sometimes", client_cert=True)
