"""client-config-dir, ccd-exclusive and ifconfig-pool-persist in the running server.

The pure parts (which file, what is refused, the per-client push list, the persist file
round trip) are checked directly; the rest runs the real Server with a userspace TUN and
trivpn's own clients on 127.0.0.1 (real sockets, every wait bounded).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import client_profile, running_server, server_config

from trivpn import api
from trivpn.errors import FatalError
from trivpn.profile.profile import Profile, parse_profile
from trivpn.server.ccd import parse_ccd
from trivpn.server.ccdclient import ccd_file_name, client_pushes, find_ccd, unrouted_iroutes
from trivpn.server.config_model import PoolPersist
from trivpn.server.persist import load_pool_persist, write_pool_persist
from trivpn.server.pool import pool_for_server
from trivpn.testing.pki import PKI, common_name, with_client
from trivpn.tun.ip import build_echo_request, echo_reply_to, parse_echo_reply
from trivpn.tun.userspace import UserspaceTun

BOUND = 30
CN = "trivpn-test-client"


def test_unsafe_common_names_are_never_file_names() -> None:
    for bad in ("", ".", "..", "a/b", "../x", "a\\b", "a\x00b", "line\nbreak", "x" * 256):
        assert ccd_file_name(bad) is None, bad
    assert ccd_file_name("client-1.example_ok@x") == "client-1.example_ok@x"


def test_find_ccd_own_file_default_exclusive_disable(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert find_ccd(d, "alice", exclusive=False) is None
    (tmp_path / "DEFAULT").write_text('push "route 10.1.0.0 255.255.0.0"\n')
    default = find_ccd(d, "alice", exclusive=False)
    assert default is not None and default.push == ("route 10.1.0.0 255.255.0.0",)
    # ccd-exclusive needs the client's own file; DEFAULT does not count
    with pytest.raises(Exception, match="no client-config-dir file.*ccd-exclusive"):
        find_ccd(d, "alice", exclusive=True)
    with pytest.raises(Exception, match="ccd-exclusive"):
        find_ccd(d, "../alice", exclusive=True)
    (tmp_path / "alice").write_text("ifconfig-push 10.8.0.50 255.255.255.0\n")
    own = find_ccd(d, "alice", exclusive=True)
    assert own is not None and own.ifconfig_push is not None and not own.push
    (tmp_path / "bob").write_text("disable\n")
    with pytest.raises(Exception, match="disabled"):
        find_ccd(d, "bob", exclusive=False)
    (tmp_path / "carol").write_text("iroute not-an-address\n")
    with pytest.raises(Exception, match="client-config-dir file rejected"):
        find_ccd(d, "carol", exclusive=False)


def test_client_pushes_reset_remove_and_own_iroute() -> None:
    pool = pool_for_server(server_config(shared_pki()).network, "subnet", None)
    lease = pool.acquire("alice")
    base = ("route 10.1.0.0 255.255.0.0", "dhcp-option DNS 10.8.0.1", "route 192.168.77.0 255.255.255.0")
    assert client_pushes(base, None, lease) == [*base, "ifconfig 10.8.0.2 255.255.255.0"]
    entry = parse_ccd('push-remove dhcp-option\npush "route 10.9.0.0 255.255.0.0"\niroute 192.168.77.0 255.255.255.0\n')
    assert client_pushes(base, entry, lease) == [
        "route 10.1.0.0 255.255.0.0", "route 10.9.0.0 255.255.0.0", "ifconfig 10.8.0.2 255.255.255.0",
    ]
    reset = parse_ccd('push-reset\npush "ping 5"\npush-remove ifconfig\n')
    assert client_pushes(base, reset, lease) == ["ping 5"]


def test_iroutes_without_a_route_into_the_tun_are_reported() -> None:
    cfg = server_config(shared_pki(), "route 192.168.0.0 255.255.0.0\nserver-ipv6 fd00:8::/64")
    entry = parse_ccd(
        "iroute 192.168.77.0 255.255.255.0\niroute 172.16.1.0 255.255.255.0\n"
        "iroute-ipv6 fd00:8::8000/120\niroute-ipv6 fd00:99::/64\n"
    )
    assert unrouted_iroutes(entry, cfg) == ["172.16.1.0/24", "fd00:99::/64"]


def test_persist_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ipp.txt"
    persist = PoolPersist(str(path), 600)
    network = server_config(shared_pki()).network
    pool = pool_for_server(network, "subnet", None)
    assert load_pool_persist(pool, persist, 1.0) == 0  # no file yet: nothing, no error
    pool.acquire("bob")
    pool.acquire("alice")
    write_pool_persist(pool, persist)
    assert path.read_text() == "bob,10.8.0.2,\nalice,10.8.0.3,\n"
    assert not [p for p in tmp_path.iterdir() if p.name != "ipp.txt"]  # no temporary left
    fresh = pool_for_server(network, "subnet", None)
    assert load_pool_persist(fresh, persist, 5.0) == 2
    assert str(fresh.acquire("carol").pushes()[0].address) == "10.8.0.4"
    assert str(fresh.acquire("alice").pushes()[0].address) == "10.8.0.3"
    write_pool_persist(fresh, PoolPersist(str(path), 0))  # seconds 0: read-only
    assert path.read_text() == "bob,10.8.0.2,\nalice,10.8.0.3,\n"


async def _next_echo(receive: Callable[[], Awaitable[bytes]], reply: bool) -> bytes:
    """The next echo request (or reply) among at most 16 packets."""
    for _ in range(16):
        packet = await receive()
        if (parse_echo_reply(packet) is not None) if reply else (echo_reply_to(packet) is not None):
            return packet
    pytest.fail("no echo packet among 16")


async def _reaches_server(tunnel: api.Tunnel, tun: UserspaceTun, src: str, seq: int) -> None:
    """A packet from the client comes out of the server's TUN (the source was accepted)."""
    await tunnel.send(build_echo_request(src, "10.8.0.1", 0x5151, seq, b"ccd"))
    packet = await _next_echo(tun.receive, reply=False)
    assert echo_reply_to(packet) is not None


def _profile(pki: PKI, port: int) -> Profile:
    return parse_profile(client_profile(pki, port))


async def test_ccd_fixed_address_iroute_and_pushes(tmp_path: Path) -> None:
    pki = shared_pki()
    (tmp_path / CN).write_text(
        'ifconfig-push 10.8.0.50 255.255.255.0\niroute 192.168.77.0 255.255.255.0\n'
        'push "route 10.9.0.0 255.255.0.0"\n'
    )
    cfg = server_config(
        pki, f'client-config-dir {tmp_path}\nroute 192.168.77.0 255.255.255.0\npush "route 192.168.77.0 255.255.255.0"'
    )
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            async with api.connect(_profile(pki, server.addresses[0][1]), reconnect=False) as tunnel:
                assert tunnel.settings.ifconfig_local == "10.8.0.50"
                nets = [r.network for r in tunnel.settings.routes]
                assert "10.9.0.0" in nets and "192.168.77.0" not in nets  # not its own iroute
                await _reaches_server(tunnel, tun, "10.8.0.50", 1)
                # TUN side → an address in the client's iroute network → that client
                await tun.send(build_echo_request("10.8.0.1", "192.168.77.5", 9, 2, b"iroute"))
                request = await _next_echo(tunnel.receive, reply=False)
                reply = echo_reply_to(request)
                assert reply is not None
                # its answer, with a source inside its iroute, is accepted and reaches the TUN
                await tunnel.send(reply)
                got = parse_echo_reply(await _next_echo(tun.receive, reply=True))
                assert got is not None and (got.src, got.dst, got.seq) == ("192.168.77.5", "10.8.0.1", 2)
                assert server.hub.router.counters.bad_source == 0
                assert server.hub.pool.in_use == 1  # the fixed address blocks its pool slot
                assert len(server.clients) == 1


async def test_disabled_client_is_refused_and_the_server_stays_up(tmp_path: Path) -> None:
    pki = shared_pki()
    (tmp_path / CN).write_text("disable\n")
    other = with_client(pki, "other-client")
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki, f"client-config-dir {tmp_path}")) as (server, tun):
            port = server.addresses[0][1]
            with pytest.raises(FatalError, match="AUTH_FAILED.*disabled"):
                async with api.connect(_profile(pki, port), reconnect=False, connect_timeout=10):
                    pass
            async with api.connect(_profile(other, port), reconnect=False) as tunnel:
                assert tunnel.settings.ifconfig_local == "10.8.0.2"
                await _reaches_server(tunnel, tun, "10.8.0.2", 1)


async def test_ccd_exclusive_refuses_a_client_without_a_file(tmp_path: Path) -> None:
    pki = shared_pki()
    other = with_client(pki, "listed-client")
    (tmp_path / "listed-client").write_text('push "route 10.9.0.0 255.255.0.0"\n')
    (tmp_path / "DEFAULT").write_text("")  # does not count for ccd-exclusive
    cfg = server_config(pki, f"client-config-dir {tmp_path}\nccd-exclusive")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            port = server.addresses[0][1]
            with pytest.raises(FatalError, match="AUTH_FAILED.*ccd-exclusive"):
                async with api.connect(_profile(pki, port), reconnect=False, connect_timeout=10):
                    pass
            async with api.connect(_profile(other, port), reconnect=False) as tunnel:
                assert [r.network for r in tunnel.settings.routes] == ["10.9.0.0"]
                await _reaches_server(tunnel, tun, tunnel.settings.ifconfig_local or "", 1)


async def test_pool_persist_gives_the_same_address_after_a_restart(tmp_path: Path) -> None:
    pki = shared_pki()
    other = with_client(pki, "newcomer")
    path = tmp_path / "ipp.txt"
    cfg = server_config(pki, f"ifconfig-pool-persist {path}")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            async with api.connect(_profile(pki, server.addresses[0][1]), reconnect=False) as tunnel:
                assert tunnel.settings.ifconfig_local == "10.8.0.2"
        assert path.read_text() == f"{common_name(pki.client_cert)},10.8.0.2,\n"  # written at exit
        async with running_server(cfg) as (server, tun):
            port = server.addresses[0][1]
            async with api.connect(_profile(other, port), reconnect=False) as first:
                assert first.settings.ifconfig_local == "10.8.0.3"  # 10.8.0.2 is remembered
                async with api.connect(_profile(pki, port), reconnect=False) as again:
                    assert again.settings.ifconfig_local == "10.8.0.2"
                    await _reaches_server(again, tun, "10.8.0.2", 1)
    assert sorted(path.read_text().splitlines()) == sorted([f"{CN},10.8.0.2,", "newcomer,10.8.0.3,"])
