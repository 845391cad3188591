"""The pure pieces of `trivpn serve`: the hub's packet switch, the TUN settings, CN parsing."""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from helpers.profiles import shared_pki

from trivpn.cli import main
from trivpn.errors import ConfigError
from trivpn.server.config import parse_server_config
from trivpn.server.config_model import Listener, ServerConfig
from trivpn.server.hub import Hub
from trivpn.server.sessionparts import session_parts
from trivpn.server.sockets import ACCEPT_PAUSE, accept, bind_listener
from trivpn.server.support import check_served
from trivpn.server.tun import server_tun_config
from trivpn.tun.ip import build_echo_request


def config(extra: str = "", topology: str = "subnet") -> ServerConfig:
    pki = shared_pki()
    text = "\n".join(
        [
            "server 10.8.0.0 255.255.255.0", f"topology {topology}", "dev tun", "dh none",
            f"<ca>\n{pki.ca_cert}</ca>", f"<cert>\n{pki.server_cert}</cert>",
            f"<key>\n{pki.server_key}</key>", extra,
        ]
    )
    return parse_server_config(text)


class FakeClient:
    def __init__(self, size: int = 2, common_name: str = "") -> None:
        self.to_client, self.received = trio.open_memory_channel[list[bytes]](size)
        self.common_name = common_name
        self.retired: list[float] = []

    def retire(self, now: float) -> None:
        self.retired.append(now)


def echo(src: str, dst: str, seq: int = 1) -> bytes:
    return build_echo_request(src, dst, 1, seq, b"x")


def hub_with_two(extra: str = "") -> tuple[Hub, trio.MemoryReceiveChannel[list[bytes]], FakeClient, FakeClient]:
    tun_s, tun_r = trio.open_memory_channel[list[bytes]](2)
    hub = Hub(config(extra), tun_s)
    a, b = FakeClient(), FakeClient()
    for key, client, addr in ((1, a, "10.8.0.2"), (2, b, "10.8.0.3")):
        hub.clients[key] = client
        hub.router.learn(key, ip_address(addr))
    return hub, tun_r, a, b


def test_tun_packets_go_to_their_owner_in_one_batch_per_client() -> None:
    hub, _tun, a, b = hub_with_two()
    hub.from_tun([echo("10.8.0.1", "10.8.0.2", 1), echo("10.8.0.1", "10.8.0.3", 2),
                  echo("10.8.0.1", "10.8.0.2", 3), echo("10.8.0.1", "10.8.0.99", 4)])
    assert a.received.receive_nowait() == [echo("10.8.0.1", "10.8.0.2", 1), echo("10.8.0.1", "10.8.0.2", 3)]
    assert b.received.receive_nowait() == [echo("10.8.0.1", "10.8.0.3", 2)]
    assert hub.router.counters.no_route == 1


def test_a_full_client_channel_drops_and_counts_without_blocking() -> None:
    hub, _tun, a, b = hub_with_two()
    for seq in range(5):
        hub.from_tun([echo("10.8.0.1", "10.8.0.2", seq)])
    hub.from_tun([echo("10.8.0.1", "10.8.0.3")])
    assert hub.counters.client_full == 3  # channel of 2 batches
    assert b.received.receive_nowait() == [echo("10.8.0.1", "10.8.0.3")]


def test_client_packets_are_source_checked_and_go_to_the_tun() -> None:
    hub, tun, a, b = hub_with_two()
    hub.from_client(1, [echo("10.8.0.2", "10.8.0.1"), echo("10.8.0.3", "10.8.0.1"), b"\x45"])
    assert tun.receive_nowait() == [echo("10.8.0.2", "10.8.0.1")]
    assert hub.router.counters.bad_source == 1 and hub.router.counters.malformed == 1
    # without client-to-client, a packet for another client goes to the kernel
    hub.from_client(1, [echo("10.8.0.2", "10.8.0.3")])
    assert tun.receive_nowait() == [echo("10.8.0.2", "10.8.0.3")]
    with pytest.raises(trio.WouldBlock):
        b.received.receive_nowait()


def test_client_to_client_skips_the_tun() -> None:
    hub, tun, a, b = hub_with_two("client-to-client")
    hub.from_client(1, [echo("10.8.0.2", "10.8.0.3")])
    assert b.received.receive_nowait() == [echo("10.8.0.2", "10.8.0.3")]
    with pytest.raises(trio.WouldBlock):
        tun.receive_nowait()


def test_a_full_tun_channel_drops_and_counts() -> None:
    hub, _tun, a, _b = hub_with_two()
    for seq in range(4):
        hub.from_client(1, [echo("10.8.0.2", "10.8.0.1", seq)])
    assert hub.counters.tun_full == 2


def test_server_tun_settings_per_topology() -> None:
    sub = server_tun_config(config())
    assert sub.ipv4 == ("10.8.0.1", 24, None) and sub.routes == [] and sub.ipv6 is None
    net30 = server_tun_config(config(topology="net30"))
    assert net30.ipv4 == ("10.8.0.1", 32, "10.8.0.2")
    assert net30.routes == [("10.8.0.0/24", None, None)]
    v6 = server_tun_config(config("server-ipv6 fd00:8::/64"))
    assert v6.ipv6 == ("fd00:8::1", 64)


def test_a_bad_tls_crypt_v2_key_is_refused_and_wraps_are_fresh() -> None:
    pki = shared_pki()
    cfg = config(f"<tls-crypt>\n{pki.static_key}</tls-crypt>")
    parts = session_parts(cfg)
    assert parts.wrap_key is not None and parts.wrap_overhead > 0
    assert parts.wrap_factory(1) is not parts.wrap_factory(1)
    with pytest.raises(ConfigError, match="tls-crypt-v2"):
        session_parts(dataclasses.replace(cfg, tls_crypt=None, tls_crypt_v2="key"))


def test_a_port_in_use_is_a_one_line_config_error() -> None:
    first = bind_listener(Listener("udp", 0, "127.0.0.1", 4))
    try:
        port = first.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on udp 127.0.0.1:{port}"):
            bind_listener(Listener("udp", port, "127.0.0.1", 4))
    finally:
        first.close()


def test_ignored_options_warn_and_unsafe_ones_are_refused(tmp_path: Path) -> None:
    cfg = config("status /tmp/st.log 10\nifconfig-pool-persist ipp.txt\nuser nobody")
    warnings = check_served(cfg)
    assert warnings == []  # user/group: dropped now
    assert check_served(config()) == []
    assert check_served(config(f"client-config-dir {tmp_path}\nccd-exclusive")) == []  # served now
    assert check_served(dataclasses.replace(cfg, crl_verify="pem")) == warnings  # served now
    assert check_served(dataclasses.replace(cfg, verify_client_cert="none")) == warnings  # served now
    cases: list[tuple[dict[str, Any], str]] = [
        ({"compression": "stub"}, "comp-lzo/compress"),
    ]
    for change, name in cases:
        with pytest.raises(ConfigError, match=f"option '{name}' is not supported"):
            check_served(dataclasses.replace(cfg, **change))
    assert check_served(dataclasses.replace(cfg, tls_crypt_v2="key")) == warnings  # served now


def test_serve_command_reports_a_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("server 10.8.0.0 255.255.255.0\ndev tun\ncrl-verify missing.pem\n")
    logger = logging.getLogger("trivpn")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        assert main(["serve", str(conf)]) == 1
    finally:  # main() points the trivpn logger at this test's (soon closed) stdout
        logger.handlers[:], logger.level, logger.propagate = saved
    err = capsys.readouterr().err
    assert err.startswith("trivpn: error: ") and err.count("\n") == 1, err


def test_a_common_name_has_one_session_unless_duplicate_cn() -> None:
    for extra, expect in (("", [5.0]), ("duplicate-cn", [])):
        tun_s, _tun_r = trio.open_memory_channel[list[bytes]](2)
        hub = Hub(config(extra), tun_s)
        old, other, new = FakeClient(common_name="alice"), FakeClient(common_name="bob"), FakeClient(common_name="alice")
        hub.clients.update({1: old, 2: other, 3: new})
        assert hub.retire_common_name("alice", keep=3, now=5.0) == len(expect)
        assert old.retired == expect and other.retired == [] and new.retired == []


class _ShortOfFiles(socket.socket):
    """A listening socket whose accept() fails with EMFILE `failures` times first."""

    failures = 0
    calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


async def test_accept_waits_out_a_descriptor_shortage_instead_of_ending_the_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A flood of TCP connections up to the process's open-file limit made accept() raise
    EMFILE, which ended `trivpn serve` (measured: 66 connections with `ulimit -n 64`, the
    server exited "Too many open files"). Now accepting pauses ACCEPT_PAUSE and retries:
    5 failures cost 5 pauses and 6 calls, not a busy loop, and the connection still comes."""
    with _ShortOfFiles(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        listener.failures = 5
        with socket.create_connection(listener.getsockname()):
            start = trio.current_time()
            with trio.fail_after(5):
                conn, addr = await accept(listener)
            conn.close()
        assert addr[0] == "127.0.0.1" and listener.calls == 6
        assert trio.current_time() - start >= 5 * ACCEPT_PAUSE
