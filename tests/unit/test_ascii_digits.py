"""Numbers read from text accept ASCII digits only: `str.isdigit` is also true for "²" or
"①", which `int()` refuses, so a check with `isdigit` alone let such input through to an
exception nobody expected — from a peer's peer-info or AUTH_PENDING, or a command line."""

from __future__ import annotations

import pytest

from trivpn.errors import ConfigError
from trivpn.observe.serving import parse_host_port
from trivpn.profile.profile import parse_profile
from trivpn.tlssession.control import auth_pending_timeout
from trivpn.tlssession.negotiation import PeerInfo

ODD_DIGITS = ("²", "①", "1²", "٣")  # "٣" (Arabic-Indic three) is one int() would take


def test_a_peers_peer_info_numbers() -> None:
    for odd in ODD_DIGITS:
        info = PeerInfo.parse(f"IV_PROTO={odd}\nIV_NCP={odd}\n")
        assert info.iv_proto == 0 and info.ncp == 0 and info.ciphers is None
    assert PeerInfo.parse("IV_PROTO=990\nIV_NCP=2").iv_proto == 990


def test_a_servers_auth_pending_timeout() -> None:
    for odd in ODD_DIGITS:
        assert auth_pending_timeout(f"AUTH_PENDING,timeout {odd}", 60.0) == 60.0
    assert auth_pending_timeout("AUTH_PENDING,timeout 120", 60.0) == 120.0


def test_host_port_arguments() -> None:
    for odd in ODD_DIGITS:
        with pytest.raises(ConfigError, match="must be HOST:PORT"):
            parse_host_port(f"127.0.0.1:{odd}", "--metrics-addr")


def test_tls_version_arguments() -> None:
    with pytest.raises(ConfigError, match="tls-version-min"):
        parse_profile("client\ndev tun\nremote vpn.example.net\ntls-version-min ².3\n")
