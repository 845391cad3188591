"""testing: test utilities shipped with the package: network namespaces, PKI, a real OpenVPN server.

Integration tests never mock the peer: `netns_pair` gives two network namespaces joined by
veth, `generate_pki` a CA with server and client certificates, and `OpenVPNServer` runs
Debian's openvpn 2.6 in one namespace so a client (trivpn, or openvpn itself) can connect
from the other. Everything here needs root except the PKI and profile rendering.
"""

from __future__ import annotations

from trivpn.testing.netns import Netns, NetnsPair, netns_pair
from trivpn.testing.ovpn_server import (
    OpenVPNServer,
    ServerOptions,
    ServerStartError,
    client_profile,
    write_client_files,
)
from trivpn.testing.pki import PKI, generate_pki

__all__ = [
    "PKI",
    "Netns",
    "NetnsPair",
    "OpenVPNServer",
    "ServerOptions",
    "ServerStartError",
    "client_profile",
    "generate_pki",
    "netns_pair",
    "write_client_files",
]
