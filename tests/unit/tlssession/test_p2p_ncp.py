"""P2P NCP (tls-client without pull against a `--tls-server` peer): OpenVPN 2.6's rules."""

from __future__ import annotations

import pytest

from trivpn.errors import FatalError
from trivpn.session.config import _peer_info, iv_proto_bits
from trivpn.tlssession.keymethod import (
    IV_PROTO_CC_EXIT_NOTIFY,
    IV_PROTO_DATA_V2,
    IV_PROTO_DYN_TLS_CRYPT,
    IV_PROTO_NCP_P2P,
    IV_PROTO_REQUEST_PUSH,
    IV_PROTO_TLS_KEY_EXPORT,
)
from trivpn.tlssession.negotiation import (
    P2P_DEFAULT_PEER_ID,
    P2P_PEERID_LABEL,
    CipherPolicy,
    PeerInfo,
    p2p_agreement,
    p2p_common_cipher,
)

FULL = IV_PROTO_DATA_V2 | IV_PROTO_CC_EXIT_NOTIFY | IV_PROTO_NCP_P2P | IV_PROTO_TLS_KEY_EXPORT | IV_PROTO_DYN_TLS_CRYPT


def _peer(ciphers: str | None, proto: int = FULL) -> PeerInfo:
    text = f"IV_VER=2.6.14\nIV_PROTO={proto}\n" + (f"IV_CIPHERS={ciphers}\n" if ciphers is not None else "")
    return PeerInfo.parse(text)


def _export(label: bytes, length: int) -> bytes:
    assert label == P2P_PEERID_LABEL and length == 3
    return b"\x12\x34\x56"


def test_the_tls_servers_preference_wins() -> None:
    assert p2p_common_cipher("CHACHA20-POLY1305:AES-128-GCM", "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305") == (
        "CHACHA20-POLY1305"
    )
    assert p2p_common_cipher("AES-256-GCM:AES-128-GCM", "AES-128-GCM:AES-256-GCM") == "AES-256-GCM"


def test_names_compare_exactly_and_empty_entries_never_match() -> None:
    assert p2p_common_cipher("aes-256-gcm", "AES-256-GCM") is None
    assert p2p_common_cipher("::AES-128-GCM", "AES-128-GCM::") == "AES-128-GCM"
    assert p2p_common_cipher("", "") is None


@pytest.mark.parametrize("tls_server", [False, True])
def test_full_peer_gives_ekm_peer_id_and_flags(tls_server: bool) -> None:
    policy = CipherPolicy(["AES-256-GCM", "CHACHA20-POLY1305"])
    a = p2p_agreement(_peer("CHACHA20-POLY1305:AES-256-GCM"), policy, tls_server=tls_server, export=_export)
    assert a.cipher == ("AES-256-GCM" if tls_server else "CHACHA20-POLY1305")
    assert a.ekm and a.cc_exit and a.dyn_tls_crypt
    assert a.peer_id == 0x123456
    assert a.settings.ifconfig_local is None  # nothing pushed: the profile's ifconfig applies


def test_prf_keeps_the_fixed_peer_id_and_no_ekm() -> None:
    a = p2p_agreement(_peer("AES-128-GCM"), CipherPolicy(["AES-128-GCM"], key_derivation="prf"),
                      tls_server=False, export=_export)
    assert not a.ekm and not a.dyn_tls_crypt and a.peer_id == P2P_DEFAULT_PEER_ID


def test_a_peer_without_ncp_p2p_only_settles_the_cipher() -> None:
    a = p2p_agreement(_peer("AES-128-GCM", IV_PROTO_DATA_V2 | IV_PROTO_TLS_KEY_EXPORT),
                      CipherPolicy(["AES-128-GCM"]), tls_server=False, export=_export)
    assert a.cipher == "AES-128-GCM"
    assert (a.ekm, a.cc_exit, a.peer_id) == (False, False, None)


def test_no_common_cipher_uses_the_fallback_or_fails() -> None:
    a = p2p_agreement(_peer(None), CipherPolicy(["AES-256-GCM"], fallback="aes-128-cbc"),
                      tls_server=False, export=_export)
    assert a.cipher == "AES-128-CBC"
    with pytest.raises(FatalError, match="no data cipher in common"):
        p2p_agreement(_peer("BF-CBC"), CipherPolicy(["AES-256-GCM"]), tls_server=False, export=_export)


def test_required_ekm_without_the_peers_bit_fails() -> None:
    with pytest.raises(FatalError, match="TLS-EKM"):
        p2p_agreement(_peer("AES-256-GCM", IV_PROTO_DATA_V2 | IV_PROTO_NCP_P2P),
                      CipherPolicy(["AES-256-GCM"], key_derivation="ekm"), tls_server=False, export=_export)


def test_a_hostile_peer_info_is_bounded() -> None:
    huge = ":".join(["X"] * 100_000) + ":AES-256-GCM"
    with pytest.raises(FatalError):
        p2p_agreement(_peer(huge), CipherPolicy(["AES-256-GCM"]), tls_server=False, export=_export)


def test_p2p_peer_info_announces_ncp_p2p_and_nothing_push_related() -> None:
    bits = iv_proto_bits("auto", pull=False)
    assert bits & IV_PROTO_NCP_P2P and not bits & IV_PROTO_REQUEST_PUSH
    assert bits & IV_PROTO_TLS_KEY_EXPORT and bits & IV_PROTO_DATA_V2
    assert not iv_proto_bits("auto") & IV_PROTO_NCP_P2P
    info = _peer_info(["AES-256-GCM", "AES-128-GCM"], bits)
    assert "IV_CIPHERS=AES-256-GCM:AES-128-GCM\n" in info and "IV_NCP" not in info


def test_the_profiles_compression_framing_applies() -> None:
    a = p2p_agreement(_peer("AES-256-GCM"), CipherPolicy(["AES-256-GCM"], compression="lzo-no"),
                      tls_server=False, export=_export)
    assert a.settings.compression == "lzo-no"
