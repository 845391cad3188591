"""SessionConfig for point-to-point TLS profiles (tls-client without pull) and hand-window."""

from __future__ import annotations

from helpers.profiles import profile_text

from trivpn.profile.profile import parse_profile
from trivpn.session.config import HAND_WINDOW, SessionConfig
from trivpn.tlssession.keymethod import IV_PROTO_NCP_P2P, IV_PROTO_REQUEST_PUSH


def _p2p(extra: str = "") -> SessionConfig:
    text = profile_text("ifconfig 10.9.0.2 10.9.0.1\ncomp-lzo no\n" + extra).replace("client\n", "tls-client\n", 1)
    return SessionConfig.from_profile(parse_profile(text))


def test_p2p_profile_announces_ncp_p2p_and_keeps_its_compression_framing() -> None:
    cfg = _p2p()
    assert not cfg.pull
    assert cfg.iv_proto & IV_PROTO_NCP_P2P and not cfg.iv_proto & IV_PROTO_REQUEST_PUSH
    assert "IV_NCP" not in cfg.peer_info and "IV_CIPHERS=" in cfg.peer_info
    assert cfg.cipher_policy().compression == "lzo-no"


def test_a_pull_profile_takes_compression_from_the_push_only() -> None:
    cfg = SessionConfig.from_profile(parse_profile(profile_text("comp-lzo no\n")))
    assert cfg.pull and cfg.cipher_policy().compression is None
    assert not cfg.iv_proto & IV_PROTO_NCP_P2P


def test_hand_window_comes_from_the_profile_unless_given() -> None:
    assert _p2p("hand-window 9\n").hand_window == 9.0
    assert _p2p().hand_window == HAND_WINDOW
    assert SessionConfig.from_profile(parse_profile(profile_text("hand-window 9\n")), hand_window=5).hand_window == 5
