"""Host names a resolver can be asked about: refused ones are one-line config errors where a
profile, a server config or a command line names them (checked locally: no lookup is sent)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from trivpn.errors import ConfigError
from trivpn.hostnames import check_host_name, host_name_problem
from trivpn.observe.serving import parse_host_port
from trivpn.profile.profile import parse_profile
from trivpn.reverse.sockets import parse_hostport


@pytest.mark.parametrize("name", ["vpn.example.net", "vpn.example.net.", "10.8.0.1", "fd00::1", "localhost",
                                  "bücher.example", "a" * 63 + ".example", "under_score.example"])
def test_names_and_literals_pass(name: str) -> None:
    assert host_name_problem(name) is None


@pytest.mark.parametrize("name", ["a..b", ".", ".example", "a" * 64 + ".example", "bü..example",
                                  "ü" * 70 + ".example"])
def test_what_the_idna_codec_refuses_is_refused(name: str) -> None:
    assert host_name_problem(name) is not None
    with pytest.raises(UnicodeError):
        name.encode("idna")  # the reason: getaddrinfo would raise this, not gaierror
    with pytest.raises(ConfigError, match=r"^--server: .* is not a valid host name \("):
        check_host_name(name, "--server")


def test_the_places_that_name_hosts_refuse_them() -> None:
    with pytest.raises(ConfigError, match=r"line 3: option 'remote': 'a\.\.b' is not a valid host name"):
        parse_profile("client\ndev tun\nremote a..b 1194\n")
    with pytest.raises(ConfigError, match=r"option 'http-proxy': 'p\.\.x' is not a valid host name"):
        parse_profile("client\ndev tun\nremote vpn.example.net\nhttp-proxy p..x 3128\n")
    with pytest.raises(ConfigError, match=r"--server: 'a\.\.b' is not a valid host name"):
        parse_hostport("a..b:7000", "--server")
    with pytest.raises(ConfigError, match=r"--metrics-addr: 'a\.\.b' is not a valid host name"):
        parse_host_port("a..b:9100", "--metrics-addr")
    assert parse_hostport(":7000", "--addr", "127.0.0.1") == ("127.0.0.1", 7000)
    assert parse_hostport("[::1]:7000", "--addr") == ("::1", 7000)
    assert parse_host_port("[::1]:9100", "--metrics-addr") == ("::1", 9100)
    for bad in ("[::1:7000", "::1]:7000", "[[::1]]:7000"):
        with pytest.raises(ConfigError, match="must be HOST:PORT"):
            parse_hostport(bad, "--addr")
        with pytest.raises(ConfigError, match="must be HOST:PORT"):
            parse_host_port(bad, "--metrics-addr")


def test_expose_says_so_in_one_line() -> None:
    env = {**os.environ, "TRIVPN_TOKEN": "t" * 24}
    out = subprocess.run([sys.executable, "-m", "trivpn", "expose", "--server", "bü..example:7000", "--local",
                          "127.0.0.1:8080", "--no-reconnect"], env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode != 0
    assert len(out.stderr.splitlines()) == 1 and "--server: 'bü..example' is not a valid host name" in out.stderr
