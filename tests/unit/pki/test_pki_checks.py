"""`trivpn pki` refuses up front what the server or a client would refuse later: a tunnel
network `trivpn serve` cannot serve, a remote a profile cannot name, a client named like the
server. Each refusal comes before anything is written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.logstate import kept_logging
from hypothesis import given
from hypothesis import strategies as st

from trivpn import cli
from trivpn.errors import ConfigError
from trivpn.pki import configs, ops, store
from trivpn.profile.profile import load_profile, parse_profile
from trivpn.server.config import load_server_config


@pytest.fixture
def _logging_kept() -> Iterator[None]:
    with kept_logging():
        yield


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    ops.init(root, name="vpn.example.net")
    return root


@pytest.mark.parametrize("subnet", ["10.0.0.0/8", "10.0.0.0/15", "0.0.0.0/0"])
def test_init_refuses_a_network_the_server_refuses(tmp_path: Path, subnet: str) -> None:
    with pytest.raises(ConfigError, match=r"too large, trivpn serve takes a /16 \(255.255.0.0\) or smaller"):
        ops.init(tmp_path / "p", name="vpn.example.net", subnet=subnet)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("subnet", ["10.0.0.0/16", "10.8.0.0/29"])
def test_init_takes_the_sizes_the_server_takes(tmp_path: Path, subnet: str) -> None:
    ops.init(tmp_path / "p", name="vpn.example.net", subnet=subnet)
    assert load_server_config(str(tmp_path / "p" / "server.conf")).warnings == ()


def test_the_bounds_are_the_servers(pki: Path) -> None:
    """Just outside either bound, the server refuses the config init would have written."""
    conf = pki / "server.conf"
    text = conf.read_text()
    assert "server 10.8.0.0 255.255.255.0\n" in text
    for prefix in (configs.SUBNET_PREFIX_MIN - 1, configs.SUBNET_PREFIX_MAX + 1):
        mask = ".".join(str(b) for b in ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF).to_bytes(4, "big"))
        conf.write_text(text.replace("255.255.255.0", mask))
        with pytest.raises(ConfigError, match="option 'server'"):
            load_server_config(str(conf))


@pytest.mark.usefixtures("_logging_kept")
def test_cli_subnet_too_large_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pki", "init", str(tmp_path / "p"), "--subnet", "10.0.0.0/8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too large" in err[0], err


# ---- host names: what a profile's `remote` may name -------------------------------------

BAD_HOSTS = ["host..x", ":::", "a:b:c", "1.2.3.999", "1.2.3", "10.0.0.01", ".x", "a" * 64 + ".net",
             "2001:db8::1::2", "-x.net", "a b", "h\u00e9.net"]


@pytest.mark.parametrize("remote", [*BAD_HOSTS, "[:::]:5", "host..x:443", "[a:b:c]"])
def test_client_refuses_a_remote_the_profile_would_refuse(pki: Path, remote: str) -> None:
    index = (pki / "index.txt").read_text()
    with pytest.raises(ConfigError, match=r"^--remote '.*': not a host name or address"):
        ops.client(pki, "alice", remote=remote)
    assert (pki / "index.txt").read_text() == index  # the name is not used up
    assert list((pki / "clients").iterdir()) == []
    assert ops.client(pki, "alice").profile.exists()


@pytest.mark.parametrize(
    ("remote", "line"),
    [("a_b.example", "remote a_b.example 1194"), ("vpn.example.net.", "remote vpn.example.net. 1194"),
     ("2001:db8::1", "remote 2001:db8::1 1194"), ("[::1]:5", "remote ::1 5"),
     ("192.0.2.1:443", "remote 192.0.2.1 443"), ("localhost", "remote localhost 1194"),
     ("x.123abc", "remote x.123abc 1194")],
)
def test_client_takes_what_the_profile_takes(pki: Path, remote: str, line: str) -> None:
    profile = ops.client(pki, "alice", remote=remote).profile
    assert line in profile.read_text().splitlines()
    assert load_profile(str(profile)).warnings == []


@pytest.mark.parametrize("name", BAD_HOSTS)
def test_init_refuses_a_name_the_profile_would_refuse(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=r"^--name '.*': not a host name or address"):
        ops.init(tmp_path / "p", name=name)
    assert not (tmp_path / "p").exists()


def test_init_refuses_a_name_too_long_for_a_certificate(tmp_path: Path) -> None:
    name = "a." * 40 + "net"  # a fine host name, but no common name may be that long
    with pytest.raises(ConfigError, match="longer than a certificate's name may be"):
        ops.init(tmp_path / "p", name=name)
    assert not (tmp_path / "p").exists()


def test_init_with_an_ipv6_name(tmp_path: Path) -> None:
    ops.init(tmp_path / "p", name="2001:db8::7")
    profile = ops.client(tmp_path / "p", "alice").profile
    assert "remote 2001:db8::7 1194" in profile.read_text().splitlines()
    assert load_profile(str(profile)).warnings == []


def test_a_bad_name_from_an_older_pki_is_not_the_default_remote(pki: Path) -> None:
    """A PKI made before init checked --name: its name is no default remote, --remote is."""
    settings = pki / "settings.json"
    settings.write_text(settings.read_text().replace('"vpn.example.net"', '"host..x"'))
    with pytest.raises(ConfigError, match=r"the server's name .*give --remote.* 'host..x'"):
        ops.client(pki, "alice")
    assert "remote vpn.example.net 1194" in ops.client(pki, "alice", remote="vpn.example.net").profile.read_text()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A profile as `pki client` writes it (only its remote line is varied)."""
    root = tmp_path_factory.mktemp("template") / "p"
    ops.init(root, name="vpn.example.net")
    return ops.client(root, "t").profile.read_text()


@given(st.text(alphabet="ab1.:-_", min_size=1, max_size=12))
def test_every_host_check_host_takes_the_profile_parser_takes(template: str, host: str) -> None:
    try:
        store.check_host(host, "--remote")
    except ConfigError:
        return
    parse_profile(template.replace("remote vpn.example.net 1194", f"remote {host} 1194"))


@pytest.mark.usefixtures("_logging_kept")
def test_cli_bad_remote_is_one_line(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pki", "client", str(pki), "alice", "--remote", "host..x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--remote 'host..x': not a host name or address" in err[0], err


# ---- the server's own name --------------------------------------------------------------


def test_client_refuses_the_servers_name(pki: Path) -> None:
    index = (pki / "index.txt").read_text()
    with pytest.raises(ConfigError, match=r"^'vpn.example.net' is the server's name .*a client needs a name of its own"):
        ops.client(pki, "vpn.example.net")
    assert (pki / "index.txt").read_text() == index
    assert list((pki / "clients").iterdir()) == []


def test_revoke_says_the_servers_name_is_no_clients(pki: Path) -> None:
    crl = (pki / "crl.pem").read_text()
    with pytest.raises(ConfigError, match=r"^'vpn.example.net' is the server's certificate, not a client's"):
        ops.revoke(pki, "vpn.example.net")
    assert (pki / "crl.pem").read_text() == crl
    with pytest.raises(ConfigError, match="no client named 'alice'"):
        ops.revoke(pki, "alice")


@pytest.mark.usefixtures("_logging_kept")
def test_cli_servers_name_is_one_line(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pki", "client", str(pki), "vpn.example.net"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is the server's name" in err[0], err
    assert "revoke it first" not in err[0]
