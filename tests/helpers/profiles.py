"""Client profiles with a real (generated) PKI, for tests that build a SessionConfig."""

from __future__ import annotations

from functools import cache

from trivpn.profile.profile import Profile, parse_profile
from trivpn.testing.pki import PKI, generate_pki


@cache
def shared_pki() -> PKI:
    """One PKI per test process (EC keys: fast)."""
    return generate_pki()


def profile_text(extra: str = "", *, remote: str = "remote vpn.example 1194 udp\n") -> str:
    """A complete client profile (ca, cert, key) plus `extra` option lines."""
    pki = shared_pki()
    return (
        f"client\ndev tun\n{remote}"
        f"<ca>\n{pki.ca_cert}</ca>\n<cert>\n{pki.client_cert}</cert>\n<key>\n{pki.client_key}</key>\n"
        + extra
    )


def make_profile(extra: str = "", *, remote: str = "remote vpn.example 1194 udp\n") -> Profile:
    return parse_profile(profile_text(extra, remote=remote))
