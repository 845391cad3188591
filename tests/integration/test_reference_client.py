"""Prove the test world with OpenVPN's OWN client before trusting it with trivpn.

If Debian's openvpn client cannot connect through a server variant with the profile that
`client_profile` renders, the fault is in the fixtures, not in trivpn; these tests pin that
down. The cheap tests at the bottom check the PKI and profile shapes without root.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from trivpn.errors import ConfigError
from trivpn.testing.netns import Netns, netns_pair
from trivpn.testing.ovpn_server import (
    READY_LINE,
    OpenVPNServer,
    ServerOptions,
    ServerStartError,
    client_profile,
    write_client_files,
)
from trivpn.testing.pki import PKI, generate_pki, static_key_text

#: Bound on the reference client's handshake (it takes well under a second here).
CLIENT_READY_TIMEOUT = 15.0
CLIENT_STOP_TIMEOUT = 5.0
PING = ["ping", "-c", "2", "-i", "0.2", "-W", "2"]

CASES = {
    "udp-tlscrypt": (ServerOptions(proto="udp", wrap="tls-crypt"), True),
    "tcp-tlsauth": (ServerOptions(proto="tcp", wrap="tls-auth", auth="SHA256"), True),
    # The v6 transport case also covers a profile that refers to files instead of inlining.
    "udp6-nowrap": (ServerOptions(proto="udp6", wrap="none"), False),
}


def _links(ns: Netns) -> set[str]:
    out = ns.run(["ip", "-o", "link", "show"]).stdout
    return {ln.split(":")[1].strip().split("@")[0] for ln in out.splitlines() if ":" in ln}


def _tunnel_address(ns: Netns, family: str, prefix: str) -> tuple[str, str]:
    """(address, device) of the client's tunnel address in `prefix` for family -4 or -6."""
    out = ns.run(["ip", "-o", family, "addr", "show", "scope", "global"]).stdout
    for ln in out.splitlines():
        fields = ln.split()
        if fields[3].startswith(prefix):
            return fields[3].split("/")[0], fields[1]
    raise AssertionError(f"no {prefix}* address in the client namespace:\n{out}")


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if READY_LINE in text:
            return
        if proc.poll() is not None:
            raise AssertionError(f"openvpn client exited with {proc.returncode}:\n{text[-4000:]}")
        time.sleep(0.05)
    text = log.read_text(errors="replace") if log.exists() else ""
    raise AssertionError(f"openvpn client not ready within {timeout}s:\n{text[-4000:]}")


@pytest.mark.root
@pytest.mark.parametrize("case", list(CASES))
def test_reference_client_pings_both_ways(case, pki, netns, openvpn_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    opts, inline = CASES[case]
    server = openvpn_server(opts)
    profile = tmp_path / "client.ovpn"
    profile.write_text(client_profile(pki, opts, server.remote_host, inline=inline))
    if not inline:
        write_client_files(tmp_path, pki, opts)
    log = tmp_path / "client.log"
    links_before = _links(netns.client)
    proc = netns.client.popen(
        ["openvpn", "--config", str(profile), "--log", str(log)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(proc, log, CLIENT_READY_TIMEOUT)
        client_log = log.read_text()
        assert "VERIFY EKU OK" in client_log and "VERIFY X509NAME OK" in client_log
        client_v4, dev = _tunnel_address(netns.client, "-4", "10.202.0.")
        client_v6, _ = _tunnel_address(netns.client, "-6", "fd00:202:")
        assert dev not in links_before
        for target in (server.tunnel_v4, server.tunnel_v6):
            r = netns.client.run([*PING, target], check=False)
            assert r.returncode == 0, f"client -> {target}:\n{r.stdout}{r.stderr}"
            assert "2 received" in r.stdout
        for target in (client_v4, client_v6):
            r = netns.server.run([*PING, target], check=False)
            assert r.returncode == 0, f"server -> {target}:\n{r.stdout}{r.stderr}"
            assert "2 received" in r.stdout
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=CLIENT_STOP_TIMEOUT)
        assert dev not in _links(netns.client)
        assert _links(netns.client) == links_before
        assert server.running
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.root
def test_netns_pair_is_deleted_even_on_error() -> None:
    names: list[str] = []
    with pytest.raises(KeyboardInterrupt), netns_pair(prefix="tvgone") as pair:
        names += [pair.server.name, pair.client.name]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(n in listed for n in names)
        r = pair.client.run(["ping", "-c", "1", "-W", "2", pair.server_v6])
        assert r.returncode == 0
        raise KeyboardInterrupt
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)


@pytest.mark.root
def test_server_start_failure_shows_log_tail(pki, netns, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = OpenVPNServer(netns.server, pki, ServerOptions(extra=["no-such-option-xyz"]), tmp_path)
    with pytest.raises(ServerStartError, match="no-such-option-xyz"):
        server.start(timeout=10)
    assert not server.running
    server.stop()  # idempotent


# --- no root needed -------------------------------------------------------------------


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_pki_extensions_match_what_openvpn_checks(key_type: str) -> None:
    p = generate_pki(key_type=key_type)
    ca, server, client, other = (
        _cert(c) for c in (p.ca_cert, p.server_cert, p.client_cert, p.other_ca_cert)
    )
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku_s = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    eku_c = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku_s) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(eku_c) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ku = server.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    with pytest.raises(ValueError):
        server.verify_directly_issued_by(other)
    assert "PRIVATE KEY" in p.server_key and "PRIVATE KEY" in p.client_key


def test_generate_pki_rejects_unknown_key_type() -> None:
    with pytest.raises(ConfigError, match="key_type"):
        generate_pki(key_type="dsa")


def test_static_key_has_openvpns_exact_layout(pki: PKI) -> None:
    lines = pki.static_key.splitlines()
    assert lines[:4] == [
        "#",
        "# 2048 bit OpenVPN static key",
        "#",
        "-----BEGIN OpenVPN Static key V1-----",
    ]
    assert lines[-1] == "-----END OpenVPN Static key V1-----"
    body = lines[4:-1]
    assert len(body) == 16 and all(re.fullmatch(r"[0-9a-f]{32}", ln) for ln in body)
    assert static_key_text(bytes(range(256))).splitlines()[4] == bytes(range(16)).hex()


@pytest.mark.root  # only for the `openvpn` binary
def test_static_key_layout_equals_openvpn_genkey(tmp_path: Path) -> None:
    key = tmp_path / "ta.key"
    subprocess.run(["openvpn", "--genkey", "secret", str(key)], check=True, timeout=10)
    theirs = key.read_text().splitlines()
    ours = static_key_text().splitlines()
    assert [ln for ln in theirs if not re.fullmatch(r"[0-9a-f]{32}", ln)] == [
        ln for ln in ours if not re.fullmatch(r"[0-9a-f]{32}", ln)
    ]
    assert len(theirs) == len(ours)


def test_client_profile_shapes(pki: PKI, tmp_path: Path) -> None:
    opts = ServerOptions(proto="tcp6", wrap="tls-auth", auth="SHA512", port=443)
    text = client_profile(pki, opts, "fd00:201::1", extra=["mssfix 1400"])
    lines = text.splitlines()
    for needed in (
        "client",
        "dev tun",
        "proto tcp6",
        "remote fd00:201::1 443",
        "remote-cert-tls server",
        "verify-x509-name trivpn-test-server name",
        "auth SHA512",
        "key-direction 1",
        "<tls-auth>",
        "mssfix 1400",
    ):
        assert needed in lines, needed
    assert pki.client_key.strip() in text and pki.ca_cert.strip() in text
    crypt = client_profile(pki, ServerOptions(wrap="tls-crypt"), "10.201.0.1", inline=False)
    assert "tls-crypt ta.key" in crypt.splitlines() and "<ca>" not in crypt
    d = write_client_files(tmp_path / "files", pki, ServerOptions(wrap="tls-crypt"))
    assert sorted(p.name for p in d.iterdir()) == ["ca.crt", "client.crt", "client.key", "ta.key"]
    assert "<tls-" not in client_profile(pki, ServerOptions(wrap="none"), "10.201.0.1")


@pytest.mark.parametrize(
    "bad",
    [
        {"proto": "sctp"},
        {"wrap": "tls-crypt-v2"},
        {"topology": "p2p"},
        {"port": 0},
        {"keepalive": (10, 5)},
    ],
)
def test_bad_server_options_are_one_line_config_errors(bad: dict[str, object], pki: PKI) -> None:
    opts = ServerOptions(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as exc:
        client_profile(pki, opts, "10.201.0.1")
    assert "\n" not in str(exc.value)
