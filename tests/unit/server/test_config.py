"""Tests for the server configuration parser (trivpn.server.config)."""

from __future__ import annotations

import base64
import shutil
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trivpn.errors import ConfigError
from trivpn.server.config import load_server_config, parse_server_config
from trivpn.server.config_model import Listener, ServerConfig
from trivpn.server.demux_types import DemuxConfig
from trivpn.server.pool import AddressPool
from trivpn.server.pool_types import IPv4Pool, IPv6Pool, PoolType

CA = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUCA==\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgE=\n-----END PRIVATE KEY-----\n"
DH = "-----BEGIN DH PARAMETERS-----\nMIIBCAKCAQEA//8=\n-----END DH PARAMETERS-----\n"
CRL = "-----BEGIN X509 CRL-----\nMIIBpjCBjwIBATANBgkqhkiG9w0BAQsFADA=\n-----END X509 CRL-----\n"
STATIC_KEY = (
    "#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n"
    + "".join(f"{i:02x}" * 16 + "\n" for i in range(16))
    + "-----END OpenVPN Static key V1-----\n"
)
V2_SERVER_KEY = (
    "-----BEGIN OpenVPN tls-crypt-v2 server key-----\n"
    + base64.b64encode(bytes(range(128))).decode()
    + "\n-----END OpenVPN tls-crypt-v2 server key-----\n"
)

KEYS = f"<ca>\n{CA}</ca>\n<cert>\n{CA}</cert>\n<key>\n{KEY}</key>\ndh none\n"
BASE = "dev tun\nserver 10.8.0.0 255.255.255.0\n" + KEYS


def parse(extra: str = "", base: str = BASE) -> ServerConfig:
    return parse_server_config(base + extra)


def error(extra: str, base: str = BASE) -> str:
    with pytest.raises(ConfigError) as info:
        parse(extra, base)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- real-looking configurations ---------------------------------------------------------

DEBIAN_SAMPLE = Path("/usr/share/doc/openvpn/examples/sample-config-files/server.conf")


def _write_pki(directory: Path) -> None:
    for name, text in {
        "ca.crt": CA,
        "server.crt": CA,
        "server.key": KEY,
        "dh2048.pem": DH,
        "ta.key": STATIC_KEY,
    }.items():
        (directory / name).write_text(text)


@pytest.mark.skipif(not DEBIAN_SAMPLE.exists(), reason="Debian's openvpn sample configs")
def test_debian_sample_server_conf(tmp_path: Path) -> None:
    shutil.copy(DEBIAN_SAMPLE, tmp_path / "server.conf")
    _write_pki(tmp_path)
    cfg = load_server_config(tmp_path / "server.conf")
    assert cfg.listeners == (Listener("udp", 1194, None, None, cfg.listeners[0].line),)
    assert cfg.topology == "subnet"
    assert cfg.ifconfig == (IPv4Address("10.8.0.1"), IPv4Address("255.255.255.0"))
    assert cfg.pool is not None and cfg.pool.type is PoolType.INDIV
    assert (cfg.pool.start, cfg.pool.end) == (IPv4Address("10.8.0.2"), IPv4Address("10.8.0.254"))
    assert cfg.push == ("route-gateway 10.8.0.1", "topology subnet", "ping 10", "ping-restart 120")
    assert (cfg.ping, cfg.ping_restart) == (10, 240)
    assert cfg.pool_persist is not None and cfg.pool_persist.path == "/var/log/openvpn/ipp.txt"
    assert cfg.status is not None and cfg.status.version == 1
    assert cfg.persist_key and cfg.persist_tun and cfg.verb == 3
    assert cfg.explicit_exit_notify == 1
    assert cfg.ca == CA and cfg.key == KEY
    # only the DH parameters (we use ECDHE) earn a warning
    assert len(cfg.warnings) == 1 and "'dh'" in cfg.warnings[0]
    assert cfg.source == str(tmp_path / "server.conf")


def test_debian_sample_with_its_optional_lines_enabled(tmp_path: Path) -> None:
    text = DEBIAN_SAMPLE.read_text() if DEBIAN_SAMPLE.exists() else ""
    enabled = []
    for line in text.splitlines():
        # every commented-out example except the tap/bridge ones and the learn-address script
        if line.startswith(";") and not any(
            w in line for w in ("dev tap", "server-bridge", "learn-address", "local a.b")
        ):
            line = line[1:]
        enabled.append(line)
    if not text:
        pytest.skip("Debian's openvpn sample configs")
    _write_pki(tmp_path)
    (tmp_path / "server.conf").write_text("\n".join(enabled) + "\n")
    cfg = load_server_config(tmp_path / "server.conf")
    assert cfg.tls_auth == STATIC_KEY and cfg.key_direction == 0
    assert cfg.client_to_client and cfg.duplicate_cn and cfg.max_clients == 100
    assert (cfg.user, cfg.group) == ("openvpn", "openvpn")
    assert cfg.client_config_dir == str(tmp_path / "ccd")
    assert cfg.listeners[0].proto == "udp"  # the later `proto udp` wins over `proto tcp`
    assert cfg.data_ciphers == ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305", "AES-256-CBC")
    assert "redirect-gateway def1 bypass-dhcp" in cfg.push
    assert IPv4Network("192.168.40.128/29") in cfg.routes
    warned = {w.split("'")[1] for w in cfg.warnings}
    assert warned == {"dh", "dev-node", "log", "log-append"}
    # the learn-address example needs 'script-security 2', which the sample does not set
    (tmp_path / "server.conf").write_text(text.replace(";learn-address", "learn-address"))
    with pytest.raises(ConfigError, match="option 'learn-address': runs a script"):
        load_server_config(tmp_path / "server.conf")


FULL = f"""\
# a production-style server: UDP and TCP, v4 and v6, tls-crypt, user/password
mode server
tls-server
port 1194
<listen>
proto udp
</listen>
<listen>
proto tcp-server
port 443
local 192.0.2.1
</listen>
<listen>
proto udp6
local ::
</listen>
dev tun0
topology subnet
server 10.8.0.0 255.255.255.0
server-ipv6 fd00:8::/64
{KEYS}
<tls-crypt>
{STATIC_KEY}</tls-crypt>
data-ciphers AES-256-GCM:CHACHA20-POLY1305
data-ciphers-fallback AES-256-CBC
keepalive 10 60
push "dhcp-option DNS 10.8.0.1"
push "route 192.168.50.0 255.255.255.0"
push 'dhcp-option DOMAIN example.test'
client-to-client
duplicate-cn
max-clients 100
max-routes-per-client 16
ifconfig-pool-persist ipp.txt 0
client-config-dir /etc/openvpn/ccd
ccd-exclusive
verify-client-cert optional
remote-cert-tls client
<crl-verify>
{CRL}</crl-verify>
script-security 2
auth-user-pass-verify "/usr/local/bin/check user" via-file
username-as-common-name
client-connect /usr/local/bin/connect.sh
client-disconnect /usr/local/bin/disconnect.sh
learn-address /usr/local/bin/learn.sh
explicit-exit-notify 1
reneg-sec 7200
hand-window 30
status /run/openvpn/status.log 10
status-version 2
user nobody
group nogroup
management /run/openvpn/mgmt.sock unix /etc/openvpn/mgmt.pw
verb 4
persist-key
persist-tun
route 192.168.77.0 255.255.255.0
route-ipv6 fd00:77::/64
connect-freq-initial 50 10
"""


def test_full_server(tmp_path: Path) -> None:
    cfg = parse_server_config(FULL, base_dir=tmp_path)
    assert cfg.warnings == ()
    assert cfg.listeners == (
        Listener("udp", 1194, None, None, 5),
        Listener("tcp", 443, "192.0.2.1", None, 8),
        Listener("udp", 1194, "::", 6, 13),
    )
    assert cfg.dev == "tun0" and cfg.topology == "subnet"
    assert cfg.tls_crypt == STATIC_KEY and cfg.tls_auth is None
    assert cfg.data_ciphers == ("AES-256-GCM", "CHACHA20-POLY1305")
    assert cfg.data_ciphers_fallback == "AES-256-CBC"
    assert cfg.push == (
        "dhcp-option DNS 10.8.0.1",
        "route 192.168.50.0 255.255.255.0",
        "dhcp-option DOMAIN example.test",
        "tun-ipv6",
        "route-gateway 10.8.0.1",
        "topology subnet",
        "ping 10",
        "ping-restart 60",
    )
    assert cfg.client_to_client and cfg.duplicate_cn and cfg.ccd_exclusive
    assert cfg.max_clients == 100 and cfg.max_routes_per_client == 16
    assert cfg.pool_persist is not None
    assert cfg.pool_persist.path == str(tmp_path / "ipp.txt") and cfg.pool_persist.seconds == 0
    assert cfg.client_config_dir == "/etc/openvpn/ccd"
    assert cfg.verify_client_cert == "optional" and cfg.remote_cert_tls == "client"
    assert cfg.crl_verify == CRL
    assert cfg.auth_user_pass_verify is not None
    assert cfg.auth_user_pass_verify.command == "/usr/local/bin/check user"
    assert cfg.auth_user_pass_verify.method == "via-file"
    assert cfg.script_security == 2 and cfg.username_as_common_name
    assert cfg.client_connect == "/usr/local/bin/connect.sh"
    assert cfg.client_disconnect == "/usr/local/bin/disconnect.sh"
    assert cfg.learn_address == "/usr/local/bin/learn.sh"
    assert (cfg.reneg_sec, cfg.hand_window) == (7200, 30)
    assert cfg.status is not None
    assert (cfg.status.path, cfg.status.seconds, cfg.status.version) == (
        "/run/openvpn/status.log",
        10,
        2,
    )
    assert (cfg.user, cfg.group) == ("nobody", "nogroup")
    assert cfg.management is not None and cfg.management.unix
    assert cfg.management.address == "/run/openvpn/mgmt.sock"
    assert cfg.management.password_file == "/etc/openvpn/mgmt.pw"
    assert cfg.routes == (IPv4Network("192.168.77.0/24"),)
    assert cfg.routes_ipv6 == (IPv6Network("fd00:77::/64"),)
    assert cfg.connect_freq_initial == (50, 10)


def test_defaults() -> None:
    cfg = parse()
    assert cfg.listeners == (Listener("udp", 1194, None, None, 0),)
    assert cfg.topology == "net30"  # OpenVPN 2.6's default
    assert cfg.max_clients == 1024 and cfg.hand_window == 60 and cfg.reneg_sec == 3600
    assert cfg.connect_freq_initial == (100, 10) and cfg.connect_freq is None
    assert cfg.verify_client_cert == "require" and cfg.script_security == 1
    assert cfg.data_ciphers == ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    assert cfg.ping is None and cfg.ping_restart is None
    assert cfg.dh == "none" and cfg.warnings == ()


def test_demux_config() -> None:
    demux = parse("hand-window 30\nmax-clients 10\nconnect-freq-initial 5 2\n").demux_config()
    assert (demux.hand_window, demux.max_clients) == (30, 10)
    assert (demux.connect_freq_initial, demux.connect_freq_initial_period) == (5, 2.0)
    assert parse().demux_config() == DemuxConfig()  # the same OpenVPN defaults
    new = parse("connect-freq 10 60\n").demux_config()
    assert (new.connect_freq, new.connect_freq_period) == (10, 60.0)
    assert parse("connect-freq 10 0\n").connect_freq is None  # OpenVPN: 0 seconds is off


def test_files_relative_to_config(tmp_path: Path) -> None:
    _write_pki(tmp_path)
    (tmp_path / "crl.pem").write_text(CRL)
    (tmp_path / "v2.key").write_text(V2_SERVER_KEY)
    text = (
        "server 10.8.0.0 255.255.255.0\ndev tun\nca ca.crt\ncert server.crt\nkey server.key\n"
        "dh dh2048.pem\ncrl-verify crl.pem\ntls-crypt-v2 v2.key\n"
    )
    (tmp_path / "s.conf").write_text(text)
    cfg = load_server_config(tmp_path / "s.conf")
    assert cfg.ca == CA and cfg.dh == DH and cfg.crl_verify == CRL
    assert cfg.tls_crypt_v2 == V2_SERVER_KEY


def test_cd_moves_relative_names(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    _write_pki(tmp_path / "pki")
    (tmp_path / "pki" / "crl.pem").write_text(CRL)
    text = (
        f"cd {tmp_path / 'pki'}\nserver 10.8.0.0 255.255.255.0\ndev tun\nca ca.crt\n"
        "cert server.crt\nkey server.key\ncrl-verify crl.pem\nstatus status.log\n"
    )
    cfg = parse_server_config(text, base_dir=Path("/nonexistent"))
    assert cfg.ca == CA and cfg.crl_verify == CRL
    assert cfg.crl_verify_path == str(tmp_path / "pki" / "crl.pem")
    assert cfg.status is not None and cfg.status.path == str(tmp_path / "pki" / "status.log")
    assert "is not a directory" in error(f"cd {tmp_path / 'missing'}\n")


# ---- the server helper ---------------------------------------------------------------------


def _addresses(cfg: ServerConfig, n: int) -> list[str]:
    """The ifconfig/ifconfig-ipv6 pushes of the first ``n`` clients of the config's pool."""
    pool = AddressPool(cfg.pool, cfg.pool_ipv6)
    return [",".join(push.option for push in pool.acquire(f"client{i}").pushes()) for i in range(n)]


def test_subnet_helper() -> None:
    cfg = parse("topology subnet\n")
    net = IPv4Network("10.8.0.0/24")
    assert cfg.network == net
    assert cfg.ifconfig == (IPv4Address("10.8.0.1"), IPv4Address("255.255.255.0"))
    assert cfg.pool == IPv4Pool(
        PoolType.INDIV,
        IPv4Address("10.8.0.2"),
        IPv4Address("10.8.0.254"),
        IPv4Address("255.255.255.0"),
        net,
        IPv4Address("10.8.0.1"),
    )
    # [V] pool base 10.8.0.2, size 253; the client got `ifconfig 10.8.0.2 255.255.255.0`
    assert AddressPool(cfg.pool).size == 253
    assert _addresses(cfg, 2) == [
        "ifconfig 10.8.0.2 255.255.255.0",
        "ifconfig 10.8.0.3 255.255.255.0",
    ]
    assert cfg.push == ("route-gateway 10.8.0.1", "topology subnet")
    assert cfg.routes == ()  # the tun's own subnet covers the clients


def test_net30_helper() -> None:
    cfg = parse("server 10.9.0.0 255.255.255.0\n")
    assert cfg.topology == "net30"
    assert cfg.ifconfig == (IPv4Address("10.9.0.1"), IPv4Address("10.9.0.2"))
    pool = cfg.pool
    assert pool is not None and pool.type is PoolType.NET30
    assert (pool.start, pool.end) == (IPv4Address("10.9.0.4"), IPv4Address("10.9.0.251"))
    assert pool.server == IPv4Address("10.9.0.1")
    assert AddressPool(pool).size == 62
    # [V] first client 10.9.0.6/10.9.0.5, next 10.9.0.10/10.9.0.9
    assert _addresses(cfg, 2) == ["ifconfig 10.9.0.6 10.9.0.5", "ifconfig 10.9.0.10 10.9.0.9"]
    assert cfg.push == ("route 10.9.0.1", "topology net30")  # [V]
    assert cfg.routes == (IPv4Network("10.9.0.0/24"),)


def test_net30_with_client_to_client_pushes_the_whole_network() -> None:
    cfg = parse("client-to-client\ntopology net30\n")
    assert cfg.push == ("route 10.8.0.0 255.255.255.0", "topology net30")


def test_net30_slash29_uses_the_last_block() -> None:
    cfg = parse("", base="dev tun\nserver 10.8.0.0 255.255.255.248\n" + KEYS)
    assert cfg.pool is not None
    assert (cfg.pool.start, cfg.pool.end) == (IPv4Address("10.8.0.4"), IPv4Address("10.8.0.7"))


def test_nopool() -> None:
    cfg = parse("", base="dev tun\nserver 10.8.0.0 255.255.255.0 nopool\ntopology subnet\n" + KEYS)
    assert cfg.pool is None and cfg.ifconfig is not None
    cfg = parse(
        "ifconfig-pool 10.8.0.100 10.8.0.199\n",
        base="dev tun\nserver 10.8.0.0 255.255.255.0 nopool\ntopology subnet\n" + KEYS,
    )
    assert cfg.pool == IPv4Pool(
        PoolType.INDIV,
        IPv4Address("10.8.0.100"),
        IPv4Address("10.8.0.199"),
        IPv4Address("255.255.255.0"),
        IPv4Network("10.8.0.0/24"),
        IPv4Address("10.8.0.1"),
    )


@pytest.mark.parametrize(
    ("prefix", "server", "pool_base"),
    [
        ("fd00:8::/64", "fd00:8::1/64", "fd00:8::1000"),
        ("fd00:8::/112", "fd00:8::1/112", "fd00:8::2"),
        ("fd00:8::/120", "fd00:8::1/120", "fd00:8::2"),
    ],
)
def test_ipv6_helper(prefix: str, server: str, pool_base: str) -> None:
    cfg = parse(f"server-ipv6 {prefix}\ntopology subnet\n")
    assert cfg.ifconfig_ipv6 == IPv6Interface(server)
    assert cfg.network_ipv6 == IPv6Network(prefix)
    bits = IPv6Network(prefix).prefixlen
    assert cfg.pool_ipv6 == IPv6Pool(IPv6Address(pool_base), bits, IPv6Interface(server).ip)
    # the IPv6 pool shares the handle with IPv4: [V] `ifconfig-ipv6 fd00:8::1000/64 fd00:8::1`
    first = _addresses(cfg, 1)[0]
    assert first == (
        f"ifconfig-ipv6 {pool_base}/{bits} {IPv6Interface(server).ip},"
        "ifconfig 10.8.0.2 255.255.255.0"
    )
    assert cfg.push == ("tun-ipv6", "route-gateway 10.8.0.1", "topology subnet")


def test_ipv6_only_server() -> None:
    cfg = parse("", base="dev tun\nserver-ipv6 fd00:8::/64\n" + KEYS)
    assert cfg.pool is None and cfg.pool_ipv6 is not None
    assert cfg.push == ("tun-ipv6",)


def test_manual_mode_server() -> None:
    base = "mode server\ntls-server\ndev tun\ntopology subnet\n" + KEYS
    cfg = parse("ifconfig 10.7.0.1 255.255.255.0\nifconfig-pool 10.7.0.10 10.7.0.20\n", base)
    assert cfg.ifconfig == (IPv4Address("10.7.0.1"), IPv4Address("255.255.255.0"))
    assert cfg.pool is not None and AddressPool(cfg.pool).size == 11 and cfg.push == ()
    assert (cfg.pool.network, cfg.pool.server) == (
        IPv4Network("10.7.0.0/24"),
        IPv4Address("10.7.0.1"),
    )
    cfg = parse(
        "ifconfig 10.7.0.1 10.7.0.2\nifconfig-pool 10.7.0.4 10.7.0.255\n",
        base.replace("subnet", "net30"),
    )
    assert cfg.pool is not None and AddressPool(cfg.pool).size == 63
    assert _addresses(cfg, 1) == ["ifconfig 10.7.0.6 10.7.0.5"]
    cfg = parse("ifconfig-ipv6 fd00:7::1/64 fd00:7::2\nifconfig-ipv6-pool fd00:7::100/64\n", base)
    assert cfg.pool_ipv6 == IPv6Pool(IPv6Address("fd00:7::100"), 64, IPv6Address("fd00:7::1"))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("comp-lzo no\n", "lzo-no"),
        ("compress\n", "stub"),
        ("compress stub-v2\n", "stub-v2"),
    ],
)
def test_compression_framing(line: str, expected: str | None) -> None:
    assert parse(line).compression == expected


def test_keepalive_and_ping_restart() -> None:
    cfg = parse("keepalive 10 60\n")
    assert (cfg.ping, cfg.ping_restart, cfg.keepalive) == (10, 120, (10, 60))
    assert cfg.push[-2:] == ("ping 10", "ping-restart 60")
    cfg = parse("keepalive 0 0\n")
    assert (cfg.ping, cfg.ping_restart, cfg.push) == (
        None,
        None,
        ("route 10.8.0.1", "topology net30"),
    )
    cfg = parse("ping 5\nping-restart 30\n")
    assert (cfg.ping, cfg.ping_restart) == (5, 30) and "ping 5" not in cfg.push


# ---- listeners -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "expected"),
    [
        ("udp", ("udp", None)),
        ("udp4", ("udp", 4)),
        ("udp6", ("udp", 6)),
        ("tcp", ("tcp", None)),
        ("tcp4", ("tcp", 4)),
        ("tcp6", ("tcp", 6)),
        ("tcp-server", ("tcp", None)),
        ("tcp6-server", ("tcp", 6)),
    ],
)
def test_proto(proto: str, expected: tuple[str, int | None]) -> None:
    (listener,) = parse(f"proto {proto}\nport 443\nlocal vpn.example.com\n").listeners
    assert (listener.proto, listener.family) == expected
    assert (listener.port, listener.local) == (443, "vpn.example.com")


def test_listen_blocks_inherit_top_level_options_anywhere() -> None:
    cfg = parse("<listen>\nproto tcp\n</listen>\n<listen>\nport 53\n</listen>\nport 8443\n")
    assert [(li.proto, li.port) for li in cfg.listeners] == [("tcp", 8443), ("udp", 53)]


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("mode p2p\n", "line 19: option 'mode': 'trivpn serve' needs 'mode server'"),
        ("mode bridge\n", "unknown mode"),
        ("server 10.8.0.0\n", "takes 2 to 3 arguments"),
        ("server 10.8.0.0 255.255.255.0 pool\n", "only 'nopool'"),
        ("server 10.8.0.1 255.255.255.0\n", "is not a network address and netmask"),
        ("server 10.8.0.0 255.0.255.0\n", "not a contiguous netmask"),
        ("server 10.8.0.0 banana\n", "is not an IPv4 netmask"),
        ("server-ipv6 fd00::\n", "/bits prefix length"),
        ("server-ipv6 fd00::/48\n", "between /64 and /124, not /48"),
        ("server-ipv6 fd00::/64x\n", "not an IPv6 network/bits"),
        ("topology star\n", "unknown topology"),
        ("topology p2p\n", "topology p2p is not supported; use subnet"),
        ("proto tcp-client\n", "is for clients"),
        ("proto sctp\n", "unknown protocol"),
        ("port 0\n", "out of range"),
        ("local\n", "takes exactly 1 argument"),
        ("ifconfig 10.8.0.1\n", "takes exactly 2 arguments"),
        ("ifconfig-pool 10.8.0.9 10.8.0.2\n", "is after end"),
        ("tls-auth\n", "takes 1 to 2 arguments"),
        ("<tls-auth>\nnot a key\n</tls-auth>\n", "no 'OpenVPN Static key V1' found"),
        ("tls-auth /nonexistent/ta.key 0\n", "cannot read"),
        (f"<tls-auth>\n{STATIC_KEY}</tls-auth>\nkey-direction 2\n", "key direction"),
        ("<tls-crypt-v2>\nbogus\n</tls-crypt-v2>\n", "no 'OpenVPN tls-crypt-v2 server key'"),
        (
            "<tls-crypt-v2>\n-----BEGIN OpenVPN tls-crypt-v2 client key-----\n</tls-crypt-v2>\n",
            "this is a client key",
        ),
        (
            "<tls-crypt-v2>\n-----BEGIN OpenVPN tls-crypt-v2 server key-----\nAAAA\n"
            "-----END OpenVPN tls-crypt-v2 server key-----\n</tls-crypt-v2>\n",
            "has 3 bytes, not 128",
        ),
        (
            "<tls-crypt-v2>\n-----BEGIN OpenVPN tls-crypt-v2 server key-----\n!!!\n"
            "-----END OpenVPN tls-crypt-v2 server key-----\n</tls-crypt-v2>\n",
            "not valid base64",
        ),
        ("tls-crypt-v2 v2.key loose\n", "force-cookie or allow-noncookie"),
        ("crl-verify /etc/crl dir\n", "CRL directory"),
        ("<crl-verify>\nnope\n</crl-verify>\n", "no PEM certificate revocation list"),
        ("<dh>\nnope\n</dh>\n", "no PEM DH parameters"),
        ('push ""\n', "empty option"),
        ('push "route 10.0.0.0 255.0.0.0,route 10.1.0.0 255.255.0.0"\n', "cannot contain ','"),
        ('push "a" "b"\n', "takes exactly 1 argument"),
        ("route 10.0.0.1 255.255.255.0\n", "is not a network address"),
        ("route-ipv6 fd00::1/64\n", "not an IPv6 network/bits"),
        ("client-to-client yes\n", "takes exactly 0 arguments"),
        ("max-clients 0\n", "out of range"),
        ("max-routes-per-client 0\n", "out of range"),
        ("max-clients 16777215\n", "out of range"),
        ("ifconfig-pool-persist ipp.txt soon\n", "is not a number"),
        ("verify-client-cert maybe\n", "none, optional or require"),
        ("remote-cert-tls server\n", "can only check 'client'"),
        ("auth-user-pass-verify /bin/check\n", "takes exactly 2 arguments"),
        ("auth-user-pass-verify /bin/check via-pipe\n", "via-file or via-env"),
        ('auth-user-pass-verify "  " via-file\nscript-security 2\n', "empty command"),
        ("script-security 4\n", "out of range 0..3"),
        ("status /tmp/s 0\n", "out of range"),
        ("status-version 4\n", "out of range 1..3"),
        ("management 127.0.0.1\n", "takes 2 to 3 arguments"),
        ('management "" 7505\n', "invalid host name"),
        ("management 127.0.0.1 70000\n", "out of range"),
        ("management 127.0.0.1 7505 stdin\n", "'stdin' is not supported"),
        ("connect-freq 10\n", "takes exactly 2 arguments"),
        ("connect-freq -1 10\n", "is not a number"),
        ("proto tcp-server\nconnect-freq 10 60\n", "only works with --mode server --proto udp"),
        ("connect-freq-initial 10 0\n", "out of range"),
        ("connect-freq-initial 0 10\n", "out of range"),
        ("keepalive 10\n", "takes exactly 2 arguments"),
        ("data-ciphers AES-256-GCM:b@d\n", "invalid cipher name"),
        ("compress lz4\n", "compression"),
        ("verb 12\n", "out of range"),
        ("<listen>\nproto tcp\ndev tun\n</listen>\n", "line 21: option 'dev': is not allowed"),
        ("<listen>\nproto tcp\n", "missing </listen>"),
        ('push "unterminated\n', "no closing quotation"),
    ],
)
def test_line_errors(extra: str, expected: str) -> None:
    message = error(extra)
    assert expected in message
    assert message.startswith("line ")


@pytest.mark.parametrize(
    "name",
    [
        "client-cert-not-required",
        "plugin /usr/lib/openvpn/plugin.so",
        "tls-verify /bin/check",
        "tls-crypt-v2-verify /bin/check",
        "verify-x509-name client1 name",
        "remote-cert-eku 'TLS Web Client Authentication'",
        "tls-cipher DEFAULT",
        "secret static.key",
        "server-bridge",
        "client",
        "remote vpn.example.com",
        "pkcs12 server.p12",
    ],
)
def test_unsafe_options_are_refused(name: str) -> None:
    assert f"option '{name.split()[0]}': is not supported" in error(name + "\n")


@pytest.mark.parametrize(
    ("extra", "base", "expected"),
    [
        ("", KEYS, "not a server configuration"),
        ("", "mode server\ndev tun\n" + KEYS, "option 'mode': 'mode server' requires 'tls-server'"),
        ("", "server 10.8.0.0 255.255.255.0\n" + KEYS, "missing 'dev tun'"),
        ("dev tap\n", BASE.replace("dev tun\n", ""), "tap (layer 2) devices are not supported"),
        ("dev-type tap\n", BASE, "option 'dev-type': tap"),
        ("dev vpn0\n", BASE.replace("dev tun\n", ""), "add 'dev-type tun'"),
        ("", BASE.replace(f"<key>\n{KEY}</key>\n", ""), "missing 'key'"),
        ("", BASE.replace(f"<ca>\n{CA}</ca>\n", ""), "missing 'ca'"),
        (
            f"<tls-auth>\n{STATIC_KEY}</tls-auth>\n<tls-crypt>\n{STATIC_KEY}</tls-crypt>\n",
            BASE,
            "'tls-auth' and 'tls-crypt' cannot be used together",
        ),
        (
            f"<tls-crypt>\n{STATIC_KEY}</tls-crypt>\n<tls-crypt-v2>\n{V2_SERVER_KEY}</tls-crypt-v2>\n",
            BASE,
            "option 'tls-crypt-v2': 'tls-crypt' and 'tls-crypt-v2' cannot be used together",
        ),
        ("verify-client-cert none\n", BASE, "needs an 'auth-user-pass-verify' script"),
        ("verify-client-cert optional\n", BASE, "clients would be accepted unchecked"),
        ("ccd-exclusive\n", BASE, "option 'ccd-exclusive': needs 'client-config-dir'"),
        ("client-connect /bin/true\n", BASE, "needs 'script-security 2' or higher (is 1)"),
        (
            "learn-address /bin/true\nscript-security 0\n",
            BASE,
            "option 'learn-address': runs a script, which needs 'script-security 2' or higher (is 0)",
        ),
        ("auth-user-pass-verify /bin/true via-file\n", BASE, "'script-security 2'"),
        (
            "auth-user-pass-verify /bin/true via-env\nscript-security 2\n",
            BASE,
            "via-env passes the password in the environment, which needs 'script-security 3'",
        ),
        ("keepalive 10 15\n", BASE, "at least twice the ping interval"),
        ("hand-window 0\n", BASE, "option 'hand-window': must be at least 1 second"),
        ("keepalive 10 60\nping 5\n", BASE, "option 'ping': cannot be used together"),
        ("ifconfig 10.8.0.1 255.255.255.0\n", BASE, "cannot be used with 'server'"),
        ("ifconfig-pool 10.8.0.10 10.8.0.20\n", BASE, "already defines the pool"),
        ("", "dev tun\nserver 10.0.0.0 255.0.0.0\n" + KEYS, "too large"),
        ("", "dev tun\nserver 10.8.0.0 255.255.255.252\n" + KEYS, "/29) or larger"),
        (
            "server-ipv6 fd00::/64\n",
            "dev tun\nserver 10.8.0.0 255.255.255.0 nopool\n" + KEYS,
            "cannot be used with 'server ... nopool'",
        ),
        ("ifconfig-ipv6-pool fd00::1000/64\nserver-ipv6 fd00::/64\n", BASE, "it sets the address"),
        (
            "ifconfig-pool 10.7.0.10 10.7.0.20\n",
            "mode server\ntls-server\ndev tun\ntopology subnet\n" + KEYS,
            "topology subnet needs a netmask",
        ),
        (
            "ifconfig-pool 10.0.0.0 10.2.0.0 255.0.0.0\n",
            "mode server\ntls-server\ndev tun\ntopology subnet\n" + KEYS,
            "more than 65536 addresses",
        ),
        (
            "ifconfig-ipv6-pool fd00:7::100/56\n",
            "mode server\ntls-server\ndev tun\n" + KEYS,
            "the prefix must be between /64 and /124",
        ),
        (
            "<listen>\n</listen>\n<listen>\n</listen>\n",
            BASE,
            "the same socket as the <listen> block",
        ),
    ],
)
def test_combination_errors(extra: str, base: str, expected: str) -> None:
    assert expected in error(extra, base)


def test_warnings_for_unimplemented_options() -> None:
    cfg = parse("txqueuelen 1000\nhash-size 512 512\nroute 10.1.0.0 255.255.0.0 10.8.0.2\n")
    assert cfg.warnings == (
        "option 'hash-size' (line 20) is not supported and was ignored",
        "option 'route' (line 21): gateway and metric are ignored (route into the tun)",
    )
    cfg = parse("username-as-common-name\n")
    assert cfg.warnings == (
        "option 'username-as-common-name' (line 19) has no effect without 'auth-user-pass-verify'",
    )


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_server_config(tmp_path / "missing.conf")
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_server_config(bad)
    big = tmp_path / "big.conf"
    big.write_bytes(b"#" * ((1 << 20) + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_server_config(big)
    with pytest.raises(ConfigError, match="larger than"):
        parse_server_config("#" * ((1 << 20) + 1))
    bad.write_text("dev tun\nserver 10.8.0.0 255.255.255.0\ntopology star\n")
    with pytest.raises(ConfigError, match=r"bad\.conf: line 3: option 'topology'"):
        load_server_config(bad)


def test_management_over_tcp_and_crlf_lines() -> None:
    cfg = parse("management localhost 7505 mgmt.pw\r\nverb 5\r\n")
    assert cfg.management is not None and not cfg.management.unix
    assert (cfg.management.address, cfg.management.port) == ("localhost", 7505)
    assert cfg.management.password_file == "mgmt.pw" and cfg.verb == 5


def test_config_is_frozen() -> None:
    cfg = parse()
    with pytest.raises(AttributeError):
        cfg.max_clients = 5  # type: ignore[misc]  # asserting the dataclass is frozen


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=60),
            st.sampled_from(
                [
                    "server 10.8.0.0 255.255.255.0",
                    "server-ipv6 fd00::/64",
                    "topology subnet",
                    "dev tun",
                    "<listen>",
                    "</listen>",
                    'push "route 10.0.0.0 255.0.0.0"',
                    "mode server",
                    "ifconfig-pool 10.8.0.4 10.8.0.9",
                    "keepalive 10 60",
                    "<ca>",
                    "</ca>",
                    CA.strip(),
                ]
            ),
        ),
        max_size=12,
    )
)
def test_arbitrary_text_only_raises_config_error(lines: list[str]) -> None:
    try:
        parse_server_config("\n".join(lines) + "\n" + KEYS)
    except ConfigError as exc:
        assert "\n" not in str(exc)
