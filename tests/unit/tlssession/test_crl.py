"""crl-verify in the TLS engine: a revoked peer certificate fails the handshake."""

from __future__ import annotations

from dataclasses import replace

import pytest
from helpers.profiles import shared_pki

from trivpn.errors import ConfigError, FatalError
from trivpn.testing.pki import PKI, generate_pki, revoke, with_client
from trivpn.tlssession.crl import MAX_CRL_BYTES, check_crl
from trivpn.tlssession.tls import TLSConfig, TLSEngine


def engines(pki: PKI, crl: str | None, *, client_side_crl: str | None = None) -> tuple[TLSEngine, TLSEngine]:
    server = TLSEngine(TLSConfig(pki.ca_cert, pki.server_cert, pki.server_key, is_server=True, crl_pem=crl))
    client = TLSEngine(TLSConfig(pki.ca_cert, pki.client_cert, pki.client_key, crl_pem=client_side_crl))
    return client, server


def handshake(client: TLSEngine, server: TLSEngine) -> None:
    """Move bytes both ways until both sides are done (raises what the engines raise)."""
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
    assert client.handshake_done and server.handshake_done


def test_unrevoked_client_passes_with_a_crl() -> None:
    pki = shared_pki()
    other = with_client(pki, "someone-else")
    client, server = engines(pki, revoke(pki, other.client_cert))
    handshake(client, server)
    assert "CN=trivpn-test-client" in (server.peer_subject or "")


def test_revoked_client_fails_verification_on_the_server() -> None:
    pki = shared_pki()
    client, server = engines(pki, revoke(pki, pki.client_cert))
    with pytest.raises(FatalError, match="client certificate verification failed: certificate revoked"):
        handshake(client, server)
    assert server.failed and not server.handshake_done
    # the server's alert reaches the client, which reports a refused certificate
    with pytest.raises(FatalError, match="rejected our certificate"):
        client.receive_ciphertext(server.ciphertext_to_send())


def test_revoked_server_fails_verification_on_the_client() -> None:
    pki = shared_pki()
    client, server = engines(pki, None, client_side_crl=revoke(pki, pki.server_cert))
    with pytest.raises(FatalError, match="server certificate verification failed: certificate revoked"):
        handshake(client, server)


def test_empty_crl_lets_everyone_in() -> None:
    pki = shared_pki()
    handshake(*engines(pki, revoke(pki)))


@pytest.mark.parametrize(
    "text",
    [
        "not a crl at all\n",
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    ],
)
def test_malformed_crl_is_a_config_error(text: str) -> None:
    pki = shared_pki()
    with pytest.raises(ConfigError, match="cannot read the CRL"):
        check_crl(text, pki.ca_cert)
    with pytest.raises(ConfigError, match="cannot read the CRL"):
        engines(pki, text)


def test_crl_from_another_ca_is_a_config_error() -> None:
    pki = shared_pki()
    foreign = generate_pki()
    crl = revoke(foreign, foreign.client_cert)
    with pytest.raises(ConfigError, match="not signed by the configured CA"):
        check_crl(crl, pki.ca_cert)
    with pytest.raises(ConfigError, match="not signed by the configured CA"):
        engines(pki, crl)


def test_crl_with_the_ca_name_but_a_forged_signature_is_a_config_error() -> None:
    """Same issuer name as our CA (generate_pki always uses it) but another key."""
    pki = shared_pki()
    impostor = generate_pki()
    crl = revoke(impostor)
    with pytest.raises(ConfigError, match="not signed by the configured CA"):
        check_crl(crl, pki.ca_cert)


def test_oversized_crl_is_refused() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        check_crl("x" * (MAX_CRL_BYTES + 1), shared_pki().ca_cert)


def test_server_schedule_delivers_the_alert_then_ends_the_refused_session() -> None:
    """KeySchedule, server role: a revoked client gets the TLS alert (its Restart names it: a
    client never gives up over a TLS alert, which anyone on the path could forge) and the
    server's session ends only after the scheduled exit, as for AUTH_FAILED."""
    from helpers.keyschedule_pair import Pair, client_config, pki, server_config

    from trivpn.tlssession.core import TLSSession
    from trivpn.tlssession.keymethod import occ_options_string
    from trivpn.tlssession.keyschedule import SCHEDULED_EXIT, Fatal, KeySchedule, Restart

    p = pki()
    cfg = TLSConfig(ca_pem=p.ca_cert, cert_pem=p.server_cert, key_pem=p.server_key, is_server=True,
                    crl_pem=revoke(p, p.client_cert))
    options = occ_options_string(proto="udp", tls_client=False, tls_auth=False, key_direction=None)
    pair = Pair(client=client_config(), server=server_config())
    pair.server.ks = KeySchedule(server_config(), lambda k, t: TLSSession(cfg, options_string=options))
    pair.connect()
    assert not any(isinstance(e, Fatal) for e in pair.client.events)
    client_end = [e for e in pair.client.events if isinstance(e, Restart)]
    assert len(client_end) == 1 and "rejected our certificate" in client_end[0].reason
    assert "certificate revoked" in client_end[0].reason and pair.client.ks.closed
    assert not any(isinstance(e, Fatal) for e in pair.server.events) and not pair.server.ks.closed
    pair.advance(SCHEDULED_EXIT + 1)
    server_fatal = [e for e in pair.server.events if isinstance(e, Fatal)]
    assert len(server_fatal) == 1 and "certificate revoked" in server_fatal[0].reason
    assert pair.server.ks.closed


def test_bad_der_inside_a_pem_block_is_said_in_words() -> None:
    """`cryptography` words bad DER as its parser's debug form (`ParseError { kind: … }`)
    and bad framing with a link to its FAQ; both reach the user as one plain line."""
    import base64

    from trivpn.tlssession.tlsload import load_certs

    der = base64.b64encode(b"\x02\x01\x05 not a certificate").decode()
    for label, call in (
        ("X509 CRL", lambda pem: check_crl(pem, shared_pki().ca_cert)),
        ("CERTIFICATE", lambda pem: check_crl("", pem)),  # the CA is read first
        ("CERTIFICATE", lambda pem: load_certs(pem, "CA certificate")),
    ):
        pem = f"-----BEGIN {label}-----\n{der}\n-----END {label}-----\n"
        with pytest.raises(ConfigError) as exc:
            call(pem)
        text = str(exc.value)
        assert "not valid DER" in text and "ParseError" not in text and "{" not in text, text
    with pytest.raises(ConfigError) as exc:
        load_certs("no pem at all", "CA certificate")
    assert "no well-formed PEM block" in str(exc.value) and "http" not in str(exc.value)


def test_server_schedule_ends_a_client_refused_at_renegotiation() -> None:
    """KeySchedule, server role: each key is a new TLS session that verifies the client's
    certificate again (the server builds it with the CRL of that moment); when the check of
    a renegotiation fails the session ends like a refusal at key 0: the current key carries
    on while the alert goes out, no other renegotiation starts, then Fatal names the cause.
    Before, the failed renegotiation was dropped and the client kept its key for ever."""
    from helpers.keyschedule_pair import Pair, pki, server_config

    from trivpn.errors import CertificateRejected
    from trivpn.tlssession.core import TLSSession
    from trivpn.tlssession.keymethod import occ_options_string
    from trivpn.tlssession.keyschedule import SCHEDULED_EXIT, Fatal, KeySchedule, Restart

    p = pki()
    base = TLSConfig(ca_pem=p.ca_cert, cert_pem=p.server_cert, key_pem=p.server_key, is_server=True)
    crl = {"now": revoke(p)}  # nobody revoked when the client comes
    options = occ_options_string(proto="udp", tls_client=False, tls_auth=False, key_direction=None)

    def make(key_id: int, token: str | None) -> TLSSession:
        return TLSSession(replace(base, crl_pem=crl["now"]), options_string=options)

    pair = Pair()
    pair.server.ks = KeySchedule(server_config(), make)
    pair.connect()
    assert pair.server.ks.primary == 0 == pair.client.ks.primary
    crl["now"] = revoke(p, p.client_cert)
    assert pair.client.ks.renegotiate("test", pair.now)  # the client's own, as reneg-sec would
    pair.pump()
    server = pair.server.ks
    assert not server.closed and server.pending is None and server.primary == 0
    assert not any(isinstance(e, Fatal) for e in pair.server.events)
    # the client got the alert and keeps its key (a client never ends over an alert)
    assert pair.client.ks.primary == 0 and not any(isinstance(e, Restart) for e in pair.client.events)
    # a refused client renegotiates no more, from either side
    assert not server.renegotiate("again", pair.now)
    assert pair.client.ks.renegotiate("retry", pair.now)
    pair.pump()
    assert server.pending is None and server.renegotiations == 0
    pair.advance(SCHEDULED_EXIT + 1)
    (end,) = [e for e in pair.server.events if isinstance(e, Fatal)]
    assert end.error is CertificateRejected and server.closed
    assert end.reason.startswith("refused at renegotiation: client certificate verification failed: certificate revoked")
