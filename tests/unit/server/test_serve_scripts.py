"""client-connect / client-disconnect / learn-address in the running server (rootless: the
test harness's userspace TUN, trivpn's own client on 127.0.0.1), and the pieces behind
them: the scripts' environment, the runner, the client-connect file."""

from __future__ import annotations

import hashlib
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from helpers.profiles import shared_pki
from helpers.serving import client_profile, running_server, server_config

from trivpn import api
from trivpn.errors import FatalError
from trivpn.profile.profile import parse_profile
from trivpn.server.admission import dynamic_entry, merge_entries
from trivpn.server.ccd import parse_ccd
from trivpn.server.pool_types import IfconfigPush, Lease
from trivpn.server.scripts import DaemonInfo, certificate_env, client_env, daemon_env, run_script

BOUND = 30


def _record_script(tmp_path: Path, connect_body: str = "") -> Path:
    """Appends `script_type ARGS common_name` per call; client-connect also runs `connect_body`."""
    script = tmp_path / "rec.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s|%s|%s|%s\\n" "$script_type" "$*" "$common_name" "$ifconfig_pool_remote_ip" >> {tmp_path}/calls\n'
        f'if [ "$script_type" = client-connect ]; then\n{connect_body}\nfi\n'
    )
    script.chmod(0o700)
    return script


def _calls(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "calls"
    return [line.split("|") for line in path.read_text().splitlines()] if path.exists() else []


def _gone(path: str) -> bool:
    return not Path(path).exists()


def _config(script: Path) -> str:
    return (f"script-security 2\nclient-connect {script}\nclient-disconnect {script}\n"
            f"learn-address {script}\nroute 10.66.0.0 255.255.0.0")


async def test_client_connect_file_moves_the_client_and_every_script_is_called(tmp_path: Path) -> None:
    pki = shared_pki()
    body = ('printf "ifconfig-push 10.8.0.77 255.255.255.0\\npush \\"route 10.55.0.0 255.255.0.0\\"\\n'
            'iroute 10.66.0.0 255.255.0.0\\n" > "$1"')
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cfg = server_config(pki, _config(_record_script(tmp_path, body)) + f"\ntmp-dir {scratch}")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            async with api.connect(profile, reconnect=False, connect_timeout=10) as tunnel:
                assert tunnel.settings.ifconfig_local == "10.8.0.77"
                assert "10.55.0.0" in str(tunnel.settings.routes)
                (client,) = server.clients.values()
                assert server.hub.router.owner_of(IPv4Address("10.66.1.1").packed) == client.key
    # the server's stop waited for every client's end, scripts included
    cn = "trivpn-test-client"
    assert _calls(tmp_path) == [
        ["client-connect", _calls(tmp_path)[0][1], cn, "10.8.0.2"],  # before the file moved it
        ["learn-address", f"add 10.8.0.77 {cn}", cn, "10.8.0.77"],
        ["learn-address", f"add 10.66.0.0/16 {cn}", cn, "10.8.0.77"],
        ["client-disconnect", "", cn, "10.8.0.77"],
        ["learn-address", "delete 10.8.0.77", "", ""],
        ["learn-address", "delete 10.66.0.0/16", "", ""],
    ]
    assert _gone(_calls(tmp_path)[0][1])  # the file is removed afterwards
    assert _calls(tmp_path)[0][1].startswith(f"{scratch}/")  # tmp-dir


@pytest.mark.parametrize("body", ["exit 1", 'echo disable > "$1"', 'echo "ifconfig-push nonsense" > "$1"'])
async def test_client_connect_can_refuse(tmp_path: Path, body: str) -> None:
    pki = shared_pki()
    cfg = server_config(pki, _config(_record_script(tmp_path, body)))
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            with pytest.raises(FatalError, match="AUTH_FAILED"):
                async with api.connect(profile, reconnect=False, connect_timeout=10):
                    pass
            assert all(c.lease is None for c in server.clients.values())
    kinds = [call[0] for call in _calls(tmp_path)]
    assert kinds == ["client-connect"]  # no learn-address, no client-disconnect for a refused client


def test_daemon_env_subnet_and_net30() -> None:
    pki = shared_pki()
    cfg = server_config(pki, "setenv SITE lab\nverb 5\nserver-ipv6 fd00:8::/64")
    env = daemon_env(cfg, DaemonInfo("tun7", 42, 1000))
    assert env["dev"] == "tun7" and env["daemon_pid"] == "42" and env["verb"] == "5" and env["SITE"] == "lab"
    assert env["ifconfig_local"] == "10.8.0.1" and env["ifconfig_netmask"] == "255.255.255.0"
    assert env["ifconfig_ipv6_local"] == "fd00:8::1" and env["ifconfig_ipv6_remote"] == "fd00:8::2"
    assert env["proto_1"] == "udp" and env["local_1"] == "127.0.0.1" and env["script_context"] == "init"
    net30 = daemon_env(server_config(pki, topology="net30"), DaemonInfo("tun7", 42, 1000))
    assert net30["ifconfig_remote"] == "10.8.0.2" and "ifconfig_netmask" not in net30


def test_certificate_and_client_env() -> None:
    pki = shared_pki()
    certs = [x509.load_pem_x509_certificate(p.encode()) for p in (pki.client_cert, pki.ca_cert)]
    chain = [c.public_bytes(serialization.Encoding.DER) for c in certs]
    env = certificate_env(chain)
    assert env["X509_0_CN"] == "trivpn-test-client" and env["X509_1_CN"] == "trivpn test CA"
    assert env["tls_serial_0"] == str(certs[0].serial_number)
    assert int(env["tls_serial_hex_0"].replace(":", ""), 16) == certs[0].serial_number
    assert env["tls_digest_sha256_1"] == ":".join(f"{b:02x}" for b in hashlib.sha256(chain[1]).digest())
    lease = Lease(1, "x", 0, IfconfigPush(IPv4Address("10.8.0.9"), IPv4Address("255.255.255.0")), None)
    info = {"IV_VER": "2.6.14", "IV_PLAT": "li\nnux", "bogus": "1", "UV_X": "y"}
    early = client_env(common_name="", username="bob", addr=("2001:db8::1", 5), peer_info=info, chain=(),
                       lease=None, connected=0.0, established=False)
    assert early == {"IV_VER": "2.6.14", "IV_PLAT": "li_nux", "UV_X": "y", "username": "bob",
                     "untrusted_ip6": "2001:db8::1", "untrusted_port": "5"}
    full = client_env(common_name="bob", username=None, addr=("192.0.2.1", 5), peer_info={}, chain=chain,
                      lease=lease, connected=0.0)
    assert full["trusted_ip"] == "192.0.2.1" and full["time_unix"] == "0" and "username" not in full
    mapped = client_env(common_name="", username=None, addr=("::ffff:192.0.2.7", 9), peer_info={}, chain=(),
                        lease=None, connected=0.0)
    assert mapped["trusted_ip"] == "192.0.2.7" and "common_name" not in mapped
    assert full["ifconfig_pool_remote_ip"] == "10.8.0.9" and full["common_name"] == "bob"


def test_x509_variables_come_from_the_certificates_attributes() -> None:
    """X509_0_CN is the certificate's last CN attribute: a value holding ", CN=alice" (here
    an OU after the CN) adds no field. Before, the variables were split out of the
    rendered subject and a script checking X509_0_CN saw "alice" for mallory."""
    import datetime

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x, CN=alice + O=evil")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    env = certificate_env([cert.public_bytes(serialization.Encoding.DER)])
    assert env["X509_0_CN"] == "mallory" and env["X509_0_OU"] == "x, CN=alice + O=evil"
    assert "X509_0_O" not in env


async def test_run_script_passes_only_its_environment_and_is_bounded(tmp_path: Path) -> None:
    out = tmp_path / "env"
    assert await run_script(f"sh -c 'env > {out}' x", ["a b"], {"ONLY": "1"}) == 0
    names = {line.split("=", 1)[0] for line in out.read_text().splitlines()}
    assert names <= {"ONLY", "PWD", "SHLVL", "_", "OLDPWD"}, names  # the shell may add its own
    assert await run_script("exit 3", [], {}) is None  # no such program: None, never raises
    assert await run_script("sh -c 'exit 3'", [], {}) == 3
    start = trio.current_time()
    assert await run_script("sleep 30", [], {}, seconds=0.3) is None
    assert trio.current_time() - start < 10


def test_dynamic_entry_and_merge(tmp_path: Path) -> None:
    path = tmp_path / "cc"
    path.write_text("")
    assert dynamic_entry(str(path)) is None and dynamic_entry(str(tmp_path / "missing")) is None
    path.write_text('push-reset\npush "route 10.1.0.0 255.255.0.0"\niroute 10.2.0.0 255.255.0.0\n')
    dyn = dynamic_entry(str(path))
    ccd = parse_ccd('push "route 10.3.0.0 255.255.0.0"\nifconfig-push 10.8.0.5 255.255.255.0\n')
    merged = merge_entries(ccd, dyn)
    assert merged is not None and merged.push == ("route 10.1.0.0 255.255.0.0",) and merged.push_reset
    assert merged.ifconfig_push == (IPv4Address("10.8.0.5"), IPv4Address("255.255.255.0"))
    assert merged.iroutes == (IPv4Network("10.2.0.0/16"),)
    assert merge_entries(None, dyn) is dyn and merge_entries(ccd, None) is ccd
