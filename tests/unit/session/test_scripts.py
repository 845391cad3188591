"""Client scripts: OpenVPN's arguments, environment and script-security rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from trivpn.errors import ConfigError, FatalError
from trivpn.profile.model import Profile, Remote
from trivpn.profile.profile import parse_profile
from trivpn.profile.push import parse_push_options
from trivpn.session.scripts import ScriptContext, ScriptRunner, net_gateway, script_argv, script_env
from trivpn.testing.pki import generate_pki
from trivpn.tun.tunplan import TunConfig


def _ctx(**kw: object) -> ScriptContext:
    settings = parse_push_options([
        "route-gateway 10.8.0.1", "topology subnet", "ifconfig 10.8.0.2 255.255.255.0",
        "dhcp-option DNS 10.8.0.53", "dhcp-option DOMAIN example.test", "auth-token SECRET",
    ])
    tun = TunConfig(mtu=1500, ipv4=("10.8.0.2", 24, None), ipv6=("fd00:8::1000", 64),
                    routes=[("192.168.50.0/24", "10.8.0.1", None), ("10.9.0.0/16", "10.8.0.1", 5)],
                    routes6=[("fd00:9::/64", None, None)])
    profile = Profile(remotes=[Remote("vpn.example", 1194, "udp")], setenv=[("FOO", "bar")])
    ctx = ScriptContext("tun0", tun, settings, profile, "10.99.1.1", 1194, "udp")
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def test_up_arguments_subnet_and_net30() -> None:
    assert script_argv("up", "/etc/openvpn/up.sh extra", _ctx()) == [
        "/etc/openvpn/up.sh", "extra", "tun0", "1500", "0", "10.8.0.2", "255.255.255.0", "init"]
    net30 = _ctx(tun=TunConfig(ipv4=("10.9.0.6", 32, "10.9.0.5")), restart=True)
    assert script_argv("down", "d", net30)[-3:] == ["10.9.0.6", "10.9.0.5", "restart"]
    assert script_argv("route-up", "r", _ctx()) == ["r"]
    assert script_argv("ipchange", "i", _ctx()) == ["i", "[AF_INET]10.99.1.1 1194"]


def test_environment_names_and_values() -> None:
    env = script_env("up", _ctx(), config="/etc/openvpn/c.ovpn", verb=3)
    expect = {
        "script_type": "up", "script_context": "init", "dev": "tun0", "dev_type": "tun", "tun_mtu": "1500",
        "ifconfig_local": "10.8.0.2", "ifconfig_netmask": "255.255.255.0",
        "ifconfig_ipv6_local": "fd00:8::1000", "ifconfig_ipv6_netbits": "64",
        "route_vpn_gateway": "10.8.0.1", "route_network_1": "192.168.50.0",
        "route_netmask_1": "255.255.255.0", "route_gateway_1": "10.8.0.1", "route_metric_2": "5",
        "route_ipv6_network_1": "fd00:9::/64",
        "foreign_option_1": "dhcp-option DNS 10.8.0.53", "foreign_option_2": "dhcp-option DOMAIN example.test",
        "trusted_ip": "10.99.1.1", "trusted_port": "1194", "remote_1": "vpn.example", "remote_port_1": "1194",
        "config": "/etc/openvpn/c.ovpn", "verb": "3", "daemon": "0", "FOO": "bar",
    }
    assert {k: env.get(k) for k in expect} == expect
    assert "route_metric_1" not in env and "foreign_option_3" not in env
    assert "SECRET" not in " ".join(env.values())  # a pushed token is no script's business
    assert script_env("route-up", _ctx())["redirect_gateway"] == "0"
    assert script_env("down", _ctx(signal="sigint"))["signal"] == "sigint"


def test_peer_chain_variables() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pki = generate_pki()
    chain = tuple(x509.load_pem_x509_certificate(p.encode()).public_bytes(serialization.Encoding.DER)
                  for p in (pki.server_cert, pki.ca_cert))
    env = script_env("up", _ctx(peer_chain=chain))
    assert env["common_name"] == env["X509_0_CN"] and env["tls_id_0"].endswith("CN=" + env["X509_0_CN"])
    assert "X509_1_CN" in env and len(env["tls_digest_sha256_0"].split(":")) == 32


def test_script_security_below_2_refuses_up_and_skips_the_rest() -> None:
    profile = Profile(remotes=[], script_up="/bin/true")
    with pytest.raises(ConfigError, match="script-security 2"):
        ScriptRunner(profile)
    runner = ScriptRunner(Profile(remotes=[], script_route_up="/bin/true"))
    assert not runner.has("route-up")
    assert ScriptRunner(Profile(remotes=[], script_up="/bin/true", script_security=2)).has("up")


def test_profile_options_parse() -> None:
    pki = generate_pki()
    p = parse_profile(
        f"client\ndev tun\nremote a\n<ca>\n{pki.ca_cert}</ca>\nscript-security 2\nup '/x/up.sh arg'\n"
        "down /x/down\nroute-up /x/ru\nroute-pre-down /x/rpd\nipchange /x/ip\nsetenv FOO bar\nuser nobody\ngroup nogroup\n"
    )
    assert p.scripts == {"up": "/x/up.sh arg", "down": "/x/down", "route-up": "/x/ru",
                         "route-pre-down": "/x/rpd", "ipchange": "/x/ip"}
    assert p.script_security == 2 and p.setenv == [("FOO", "bar")] and (p.user, p.group) == ("nobody", "nogroup")
    with pytest.raises(ConfigError):
        parse_profile(f"client\ndev tun\nremote a\n<ca>\n{pki.ca_cert}</ca>\nscript-security 4\n")


def test_scripts_run_with_only_the_built_environment(tmp_path: Path) -> None:
    out = tmp_path / "env"
    script = tmp_path / "up.sh"
    script.write_text(f"#!/bin/sh\nenv > {out}\necho \"$@\" >> {out}\n")
    script.chmod(0o755)
    os.environ["TRIVPN_LEAK_CHECK"] = "1"
    try:
        runner = ScriptRunner(Profile(remotes=[], script_up=str(script), script_security=2))
        trio.run(runner.run, "up", _ctx())
    finally:
        del os.environ["TRIVPN_LEAK_CHECK"]
    text = out.read_text()
    assert "script_type=up" in text and "tun0 1500 0 10.8.0.2 255.255.255.0 init" in text
    assert "TRIVPN_LEAK_CHECK" not in text


def test_a_failing_up_is_fatal_a_failing_route_up_is_not(tmp_path: Path) -> None:
    runner = ScriptRunner(Profile(remotes=[], script_up="/bin/false", script_route_up="/bin/false",
                                  script_security=2))
    with pytest.raises(FatalError, match="up script"):
        trio.run(runner.run, "up", _ctx())
    trio.run(runner.run, "route-up", _ctx())
    slow_sh = tmp_path / "slow.sh"
    slow_sh.write_text("#!/bin/sh\nexec sleep 5\n")
    slow_sh.chmod(0o755)
    slow = ScriptRunner(Profile(remotes=[], script_up=str(slow_sh), script_security=2), timeout=0.2)
    with pytest.raises(FatalError, match="did not finish"):
        trio.run(slow.run, "up", _ctx())


def test_net_gateway_reads_the_default_route(tmp_path: Path) -> None:
    f = tmp_path / "route"
    f.write_text("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
                 "eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\n")
    assert net_gateway(str(f)) == "10.0.0.1"
    assert net_gateway(str(tmp_path / "none")) == "0.0.0.0"


def test_pushed_dns_replaces_dhcp_dns_in_foreign_options_and_ipchange_sees_the_profiles() -> None:
    settings = parse_push_options([
        "dhcp-option DNS 10.8.0.53", "dhcp-option DOMAIN example.test", "dhcp-option DOMAIN-SEARCH a.test",
        "dns server 1 address 10.8.0.99 [fd00::53]:5353", "dns search-domains b.test",
        "dns server 1 resolve-domains corp.test example.net",
    ])
    ctx = _ctx(settings=settings)
    ctx.profile.dhcp_option_lines = ["dhcp-option DOMAIN-SEARCH profile.test"]
    env = script_env("up", ctx)
    assert [env.get(f"foreign_option_{i}") for i in range(1, 6)] == [
        "dhcp-option DOMAIN example.test", "dhcp-option DNS 10.8.0.99", "dhcp-option DNS6 fd00::53",
        "dhcp-option DOMAIN-SEARCH b.test", None]
    assert (env["dns_server_1_address_2"], env["dns_server_1_port_2"]) == ("fd00::53", "5353")
    assert "dns_server_1_port_1" not in env and env["dns_search_domain_1"] == "b.test"
    # as the real openvpn 2.6 client's `up` script sees them
    assert (env["dns_server_1_resolve_domain_1"], env["dns_server_1_resolve_domain_2"]) == ("corp.test", "example.net")
    ipchange = script_env("ipchange", ctx)
    assert ipchange["foreign_option_1"] == "dhcp-option DOMAIN-SEARCH profile.test"
    assert "foreign_option_2" not in ipchange and "dns_search_domain_1" not in ipchange


def test_pushed_script_options_are_never_commands() -> None:
    settings = parse_push_options(["up /tmp/evil", "route-up /tmp/evil", "script-security 3", "ping 10"])
    assert all("not supported" in w for w in settings.warnings) and len(settings.warnings) == 3
    runner = ScriptRunner(Profile(remotes=[], script_security=2))
    assert not any(runner.has(k) for k in ("up", "down", "route-up", "route-pre-down", "ipchange"))
    env = script_env("up", _ctx(settings=settings))
    assert "/tmp/evil" not in " ".join(env.values())
