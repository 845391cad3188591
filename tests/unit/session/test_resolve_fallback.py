"""The VPN server's name no longer resolves (the tunnel's DNS died with the tunnel): the
addresses it had before are used, so the client can reconnect."""

from __future__ import annotations

import socket

import pytest
import trio

from trivpn.networkio.transport import Endpoint, ResolveError
from trivpn.session import transport


class Hooks:
    def __init__(self) -> None:
        self.dns: list[bool] = []

    def resolving(self, active: bool) -> None:
        self.dns.append(active)

    def reaching(self, endpoints: object) -> None:
        pass


async def test_a_failed_lookup_falls_back_to_the_last_good_answer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    good = [Endpoint("vpn.fallback.test", 1194, "udp", socket.AF_INET, ("192.0.2.7", 1194))]
    answers: list[object] = [good, ResolveError("cannot resolve 'vpn.fallback.test': Temporary failure")]

    async def fake_resolve(host: str, port: int, proto: str) -> list[Endpoint]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, list)
        return answer

    monkeypatch.setattr(transport, "resolve", fake_resolve)
    hooks = Hooks()
    assert await transport._resolve("vpn.fallback.test", 1194, "udp", hooks) == good
    assert await transport._resolve("vpn.fallback.test", 1194, "udp", hooks) == good  # DNS down now
    assert "using the addresses it had before (192.0.2.7)" in caplog.text
    assert hooks.dns == [True, False, True, False]
    # a name never resolved in this process still fails
    answers.append(ResolveError("cannot resolve 'other.fallback.test'"))
    with pytest.raises(ResolveError):
        await transport._resolve("other.fallback.test", 1194, "udp", hooks)
    await trio.lowlevel.checkpoint()


async def test_a_proxy_is_reached_at_the_addresses_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a proxy named by host name: the client's one lookup (with the fallback above)
    gives the addresses the hooks hear of and the proxy transport connects to; the transport
    used to look the name up a second time, which failed during a reconnect."""
    import random

    from helpers.profiles import make_profile

    from trivpn.session.config import SessionConfig
    from trivpn.session.reconnect import candidates

    proxy = [Endpoint("proxy.fallback.test", 3128, "tcp", socket.AF_INET, ("192.0.2.8", 3128))]
    answers: list[object] = [proxy, ResolveError("cannot resolve 'proxy.fallback.test'")]

    async def fake_resolve(host: str, port: int, proto: str) -> list[Endpoint]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, list)
        return answer

    given: list[object] = []

    async def fake_proxy_transport(*args: object, **kw: object) -> object:
        given.append(kw.get("proxy_endpoints"))
        raise transport.TransportError("stop here")

    monkeypatch.setattr(transport, "resolve", fake_resolve)
    import trivpn.networkio.proxy as proxy_module

    monkeypatch.setattr(proxy_module, "open_profile_proxy_transport", fake_proxy_transport)
    profile = make_profile("http-proxy proxy.fallback.test 3128\n", remote="remote vpn.fallback.test 443 tcp\n")
    (cand,) = candidates(SessionConfig.from_profile(profile).connections, random.Random(0))
    for _ in range(2):  # the second time the name no longer resolves
        with pytest.raises(transport.TransportError, match="stop here"):
            await transport.open_candidate(cand, 0, 5.0, None, Hooks())
    assert given == [proxy, proxy]
