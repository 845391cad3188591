"""The engine without root: userspace TUN, a silent UDP peer on loopback, bad input.

A real server is not needed to check what the engine owns: that a bad profile is one line
before anything starts, that a run against a peer that never answers goes through the
session stack (the peer sees our hard reset) and ends with the reconnect policy's line,
that a graceful stop ends the run, and that the device is closed (or not) as asked.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from helpers.profiles import make_profile

from trivpn import api
from trivpn.controlchannel.packet import Opcode
from trivpn.engine import Engine, inherited_tun, userspace_tun
from trivpn.errors import ConfigError, FatalError
from trivpn.session.config import SessionConfig
from trivpn.tun.linux import LinuxTun
from trivpn.workers.manager import primary_error


@pytest.fixture
def silent_peer() -> Iterator[socket.socket]:
    """A UDP socket on loopback that receives and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def silent_config(peer: socket.socket) -> SessionConfig:
    """Give up after one attempt of at most 2 s."""
    port = peer.getsockname()[1]
    profile = make_profile(
        "connect-retry 1 1\nconnect-retry-max 1\nserver-poll-timeout 2\n",
        remote=f"remote 127.0.0.1 {port} udp\n",
    )
    return SessionConfig.from_profile(profile)


def first_opcode(peer: socket.socket) -> int:
    data = peer.recv(2048)
    return data[0] >> 3


async def test_api_connect_with_a_bad_profile_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.ovpn"
    path.write_text(
        "client\ndev tun\nremote 127.0.0.1 1194\n"
        "<ca>\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n</ca>\n"
    )
    with pytest.raises(ConfigError) as exc:
        async with api.connect(path):
            pytest.fail("the block must not run")
    assert "cannot read the CA certificate" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        async with api.connect(dataclasses.replace(make_profile(), ca=None)):
            pytest.fail("the block must not run")
    assert str(exc.value) == "the profile has no 'ca': the server could not be verified"


async def test_api_connect_gives_up_with_the_policy_line(
    silent_peer: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    port = silent_peer.getsockname()[1]
    with pytest.raises(FatalError) as exc:
        async with api.connect(silent_config(silent_peer).profile):
            pytest.fail("no tunnel can come up")
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("giving up after 1 attempt(s) at each remote (connect-retry-max): ")
    assert f"127.0.0.1:{port}" in message
    assert first_opcode(silent_peer) == Opcode.CONTROL_HARD_RESET_CLIENT_V2


async def test_engine_graceful_stop_before_the_tunnel_and_device_cleanup(
    silent_peer: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    port = silent_peer.getsockname()[1]
    profile = make_profile(remote=f"remote 127.0.0.1 {port} udp\n")
    device = userspace_tun()
    engine = Engine(SessionConfig.from_profile(profile), device)
    assert engine.client.ifname is None  # a userspace device has no interface to configure
    async with trio.open_nursery() as nursery:
        nursery.start_soon(engine.run)
        await trio.lowlevel.wait_readable(silent_peer)  # the session stack is sending
        engine.request_stop("test over")
    assert engine.stop_reason == "test over"
    assert device.closed  # close_device defaults to True
    assert first_opcode(silent_peer) == Opcode.CONTROL_HARD_RESET_CLIENT_V2


async def test_engine_can_leave_the_device_open(
    silent_peer: socket.socket, autojump_clock: trio.testing.MockClock
) -> None:
    device = userspace_tun()
    engine = Engine(silent_config(silent_peer), device, close_device=False)
    with pytest.raises(BaseException) as exc:
        await engine.run()
    assert isinstance(primary_error(exc.value), FatalError)
    assert not device.closed


def test_inherited_tun_checks_the_fd() -> None:
    with pytest.raises(ConfigError, match="need an inherited fd >= 3"):
        inherited_tun(2)
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    with pytest.raises(ConfigError, match=f"tunnel_file_descriptor {r} is not open"):
        inherited_tun(r)
    r, w = os.pipe()
    try:
        dev = inherited_tun(r)
        assert isinstance(dev, LinuxTun) and dev.name == f"fd{r}"
        assert inherited_tun(r, "tun7").name == "tun7"
        assert Engine(SessionConfig.from_profile(make_profile()), dev, close_device=False).client.ifname == f"fd{r}"
    finally:
        os.close(w)
        os.close(r)
