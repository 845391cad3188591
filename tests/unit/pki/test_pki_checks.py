"""`trivpn pki` refuses up front what the server or a client would refuse later: a tunnel
network `trivpn serve` cannot serve, a remote a profile cannot name, a client named like the
server. Each refusal comes before anything is written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.logstate import kept_logging

from trivpn import cli
from trivpn.errors import ConfigError
from trivpn.pki import configs, ops
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
