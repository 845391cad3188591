"""The texts `trivpn pki` writes for OpenVPN: the server's server.conf and a client's .ovpn.

Both use only options that OpenVPN 2.6, OpenVPN Connect (OpenVPN 3) and trivpn all read
the same way. The server config starts with `cd DIR` and then names its files relatively:
OpenVPN resolves relative names against its working directory, trivpn against the config's
own directory, and `cd` makes both land in DIR.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from trivpn.pki import store

DATA_CIPHERS = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"
KEEPALIVE = "keepalive 10 60"
STATUS_SECONDS = 10


#: The `server` network sizes `trivpn serve` accepts (trivpn/server/config.py, _expand_ipv4,
#: which keeps them inline; tests/unit/pki/test_pki_checks.py checks the two agree).
SUBNET_PREFIX_MIN, SUBNET_PREFIX_MAX = 16, 29


def server_network(subnet: str) -> ipaddress.IPv4Network:
    """The tunnel network, refused here if the server would refuse its config."""
    from trivpn.errors import ConfigError

    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise ConfigError(f"--subnet {subnet[:60]!r}: {exc}") from None
    if net.prefixlen > SUBNET_PREFIX_MAX:
        raise ConfigError(f"--subnet {subnet}: too small, a /{SUBNET_PREFIX_MAX} or larger is needed")
    if net.prefixlen < SUBNET_PREFIX_MIN:
        raise ConfigError(
            f"--subnet {subnet}: too large, trivpn serve takes a /{SUBNET_PREFIX_MIN} "
            f"(255.255.0.0) or smaller"
        )
    return net


def server_conf(root: Path, settings: store.Settings, made: str) -> str:
    net = server_network(settings.subnet)
    wrap = (
        f"tls-crypt-v2 {store.V2_SERVER_KEY}"
        if settings.tls_crypt_v2
        else f"tls-crypt {store.TLS_CRYPT_KEY}"
    )
    lines = [
        f"# OpenVPN 2.6 / trivpn server for {settings.name}, made by trivpn pki on {made}",
        "# start it with:  sudo trivpn serve server.conf   (or: sudo openvpn --config server.conf);",
        "# trivpn installed in a virtual environment: give sudo its full path (sudo ~/.trivpn-venv/bin/trivpn ...)",
        f"cd {root}",
        f"port {settings.port}",
        f"proto {settings.proto}",
        "dev tun",
        "topology subnet",
        f"server {net.network_address} {net.netmask}",
        "ifconfig-pool-persist ipp.txt",
        f"ca {store.CA_CERT}",
        f"cert {store.SERVER_CERT}",
        f"key {store.SERVER_KEY}",
        "dh none",
        wrap,
        "# revoked clients (trivpn pki revoke); re-read when the file changes",
        f"crl-verify {store.CRL}",
        "remote-cert-tls client",
        "tls-version-min 1.2",
        f"data-ciphers {DATA_CIPHERS}",
        KEEPALIVE,
        f"status status.log {STATUS_SECONDS}",
        "status-version 2",
        "persist-key",
        "persist-tun",
        "verb 3",
    ]
    if settings.proto == "udp":
        lines.append("explicit-exit-notify 1")
    return "\n".join(lines) + "\n"


def _block(tag: str, text: str) -> str:
    return f"<{tag}>\n{text.strip()}\n</{tag}>"


def client_profile(
    name: str,
    settings: store.Settings,
    remote: tuple[str, int],
    *,
    ca: str,
    cert: str,
    key: str,
    wrap_key: str,
    made: str,
) -> str:
    """One self-contained .ovpn: every key and certificate inline."""
    proto = "tcp-client" if settings.proto == "tcp-server" else "udp"
    head = [
        f"# {name}: client profile for {settings.name}, made by trivpn pki on {made}",
        "# contains this client's private key: keep it as secret as a password",
        "client",
        "dev tun",
        f"proto {proto}",
        f"remote {remote[0]} {remote[1]}",
        "resolv-retry infinite",
        "nobind",
        "remote-cert-tls server",
        f"verify-x509-name {settings.name} name",
        f"data-ciphers {DATA_CIPHERS}",
        "verb 3",
    ]
    blocks = [
        _block("ca", ca),
        _block("cert", cert),
        _block("key", key),
        _block("tls-crypt-v2" if settings.tls_crypt_v2 else "tls-crypt", wrap_key),
    ]
    return "\n".join(head + blocks) + "\n"
