"""`trivpn.server.service.Server` without root: trivpn's own clients on 127.0.0.1.

The server runs exactly as `trivpn serve` does (config parser, demux with the cookie
handshake, a ClientSession per client in its own task, pool, router, hub) except that its
TUN is a `UserspaceTun` the test plays the far side of. Clients are `trivpn.api.connect`
tunnels (userspace too). Real time (real sockets), every wait bounded.
"""

from __future__ import annotations

import pytest
import trio
from helpers.profiles import shared_pki
from helpers.serving import answer_echo, client_profile, ping, running_server, server_config

from trivpn import api
from trivpn.errors import FatalError
from trivpn.profile.profile import parse_profile
from trivpn.tun.ip import build_echo_request, echo_reply_to, parse_echo_reply

BOUND = 30
SERVER_IP = "10.8.0.1"


async def test_trivpn_client_gets_a_pool_address_and_pings_the_server() -> None:
    pki = shared_pki()
    seen: list[bytes] = []
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki)) as (server, tun), trio.open_nursery() as nursery:
            nursery.start_soon(answer_echo, tun, seen)
            port = server.addresses[0][1]
            async with api.connect(parse_profile(client_profile(pki, port)), reconnect=False) as tunnel:
                assert tunnel.settings.ifconfig_local == "10.8.0.2"
                assert tunnel.info.cipher == "AES-256-GCM"
                for seq in range(3):
                    await ping(tunnel, "10.8.0.2", SERVER_IP, seq)
                # a packet with a source the client does not own is dropped and counted
                await tunnel.send(build_echo_request("10.8.0.77", SERVER_IP, 1, 99, b"spoof"))
                await ping(tunnel, "10.8.0.2", SERVER_IP, 4)
                assert server.hub.router.counters.bad_source == 1
                assert len(server.clients) == 1
            # the client said EXIT: its session, lease and routes are gone
            for _ in range(200):
                if not server.clients:
                    break
                await trio.sleep(0.02)
            assert not server.clients and server.hub.router.clients == []
            assert server.hub.pool.in_use == 0
            nursery.cancel_scope.cancel()
    assert len([p for p in seen if echo_reply_to(p) is not None]) == 4


async def test_two_clients_distinct_addresses_and_client_to_client() -> None:
    pki = shared_pki()
    cfg = server_config(pki, "client-to-client\nduplicate-cn")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun):
            port = server.addresses[0][1]
            profile = parse_profile(client_profile(pki, port))
            async with api.connect(profile, reconnect=False) as a, api.connect(profile, reconnect=False) as b:
                ips = {a.settings.ifconfig_local, b.settings.ifconfig_local}
                assert ips == {"10.8.0.2", "10.8.0.3"}
                src, dst = a.settings.ifconfig_local, b.settings.ifconfig_local
                assert src is not None and dst is not None
                # a → b goes through the server without touching its TUN; b answers
                await a.send(build_echo_request(src, dst, 7, 1, b"c2c"))
                request = await b.receive()
                reply = echo_reply_to(request)
                assert reply is not None
                await b.send(reply)
                got = parse_echo_reply(await a.receive())
                assert got is not None and (got.src, got.dst, got.seq) == (dst, src, 1)
                assert tun.stats.packets_written == 0


async def test_a_refused_client_ends_only_its_own_session() -> None:
    """No shared cipher: that client gets AUTH_FAILED and its session ends; the server and
    a later client are unaffected."""
    pki = shared_pki()
    seen: list[bytes] = []
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki)) as (server, tun), trio.open_nursery() as nursery:
            nursery.start_soon(answer_echo, tun, seen)
            port = server.addresses[0][1]
            bad = parse_profile(client_profile(pki, port) + "data-ciphers AES-128-GCM\n")
            with pytest.raises(FatalError, match="AUTH_FAILED.*no shared cipher"):
                async with api.connect(bad, reconnect=False, connect_timeout=10):
                    pass
            async with api.connect(parse_profile(client_profile(pki, port)), reconnect=False) as tunnel:
                await ping(tunnel, tunnel.settings.ifconfig_local or "", SERVER_IP, 1)
            nursery.cancel_scope.cancel()


async def test_udp_and_tcp_clients_on_one_server() -> None:
    """One process listening on UDP and TCP: one pool, one router, pings from both."""
    pki = shared_pki()
    seen: list[bytes] = []
    with trio.fail_after(BOUND):
        cfg = server_config(pki, "duplicate-cn", protos=("udp", "tcp"))
        async with running_server(cfg) as (server, tun), trio.open_nursery() as nursery:
            nursery.start_soon(answer_echo, tun, seen)
            (_, udp_port), (_, tcp_port) = server.addresses
            udp = parse_profile(client_profile(pki, udp_port))
            tcp = parse_profile(client_profile(pki, tcp_port, "tcp"))
            async with api.connect(udp, reconnect=False) as a, api.connect(tcp, reconnect=False) as b:
                assert a.info.remote.endswith("(udp4)") and b.info.remote.endswith("(tcp4)")
                assert {a.settings.ifconfig_local, b.settings.ifconfig_local} == {"10.8.0.2", "10.8.0.3"}
                for seq, tunnel in enumerate((a, b, a, b)):
                    await ping(tunnel, tunnel.settings.ifconfig_local or "", SERVER_IP, seq)
                assert len(server.clients) == 2
            nursery.cancel_scope.cancel()
    assert len([p for p in seen if echo_reply_to(p) is not None]) == 4


async def test_a_newer_session_of_the_same_common_name_replaces_the_older() -> None:
    """Without duplicate-cn (a client that reconnected from a new port, say): the older
    session ends and the newcomer gets the same address at once."""
    pki = shared_pki()
    seen: list[bytes] = []
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki)) as (server, tun), trio.open_nursery() as nursery:
            nursery.start_soon(answer_echo, tun, seen)
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            async with api.connect(profile, reconnect=False) as first:
                assert first.settings.ifconfig_local == "10.8.0.2"
                (old_key,) = server.clients
                async with api.connect(profile, reconnect=False) as second:
                    assert second.settings.ifconfig_local == "10.8.0.2"
                    await ping(second, "10.8.0.2", SERVER_IP, 1)
                    assert old_key not in server.clients and len(server.clients) == 1
            nursery.cancel_scope.cancel()


async def test_net30_and_ipv6_pool_addresses() -> None:
    pki = shared_pki()
    seen: list[bytes] = []
    cfg = server_config(pki, "server-ipv6 fd00:8::/64", topology="net30")
    with trio.fail_after(BOUND):
        async with running_server(cfg) as (server, tun), trio.open_nursery() as nursery:
            nursery.start_soon(answer_echo, tun, seen)
            profile = parse_profile(client_profile(pki, server.addresses[0][1]))
            async with api.connect(profile, reconnect=False) as tunnel:
                s = tunnel.settings
                assert (s.ifconfig_local, s.ifconfig_remote_or_mask) == ("10.8.0.6", "10.8.0.5")
                assert s.ifconfig_ipv6_local is not None and s.ifconfig_ipv6_local.startswith("fd00:8::1000")
                await ping(tunnel, "10.8.0.6", SERVER_IP, 1)
                await ping(tunnel, "fd00:8::1000", "fd00:8::1", 2)
            nursery.cancel_scope.cancel()


async def test_data_channel_exit_notification_ends_the_client_session() -> None:
    """A keyed client's data packets are opened in the server's receive task; an OCC EXIT
    among them still ends that client's session (and frees its address)."""
    from trivpn.messages import SendExitNotify

    pki = shared_pki()
    with trio.fail_after(BOUND):
        async with running_server(server_config(pki)) as (server, tun), trio.open_nursery() as nursery:
            nursery.start_soon(answer_echo, tun, [])
            port = server.addresses[0][1]
            async with api.connect(parse_profile(client_profile(pki, port)), reconnect=False) as tunnel:
                await ping(tunnel, "10.8.0.2", SERVER_IP, 1)
                (client,) = server.clients.values()
                rx = client.stack.data.link.rx
                assert rx is not None and not rx.peer_exited
                session = tunnel._session
                assert session is not None
                await session.stack.data_control.send([SendExitNotify(count=1)])  # type: ignore[attr-defined]
                for _ in range(250):
                    if not server.clients:
                        break
                    await trio.sleep(0.02)
                assert rx.peer_exited
                assert not server.clients and server.hub.pool.in_use == 0
            nursery.cancel_scope.cancel()
