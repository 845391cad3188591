"""A remote that cannot be reached is a session restart, never the end of the run.

255.255.255.255 makes the kernel refuse at once (TCP: ENETUNREACH, UDP: EACCES) without a
packet leaving, as "no route" does on a machine whose network is down or has no IPv6 route.
"""

from __future__ import annotations

import socket

import pytest
import trio

from trivpn.errors import SessionRestart
from trivpn.networkio.connect import connect_first
from trivpn.networkio.transport import Endpoint, TransportError, open_transport

BROADCAST = "255.255.255.255"


def _endpoint(host: str, port: int, proto: str) -> Endpoint:
    return Endpoint(host, port, proto, socket.AF_INET, (host, port))


@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_a_refused_connect_is_a_transport_error(proto: str) -> None:
    with pytest.raises(TransportError, match="cannot reach 255.255.255.255:1") as info:
        await open_transport(_endpoint(BROADCAST, 1, proto))
    assert isinstance(info.value, SessionRestart)  # the client's loop reconnects


async def test_a_socket_that_cannot_be_made_is_a_transport_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ipv6(*_args: object) -> socket.socket:
        raise OSError(97, "Address family not supported by protocol")

    monkeypatch.setattr(socket, "socket", no_ipv6)
    with pytest.raises(TransportError, match="Address family not supported"):
        await open_transport(Endpoint("::1", 1, "udp", socket.AF_INET6, ("::1", 1, 0, 0)))


async def test_happy_eyeballs_goes_on_past_an_unreachable_address() -> None:
    """Before, ENETUNREACH from the first address escaped the race and ended the run."""
    with trio.fail_after(5):
        listener = trio.socket.socket()
        with listener:
            await listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            port = listener.getsockname()[1]
            good = _endpoint("127.0.0.1", port, "tcp")
            transport = await connect_first([_endpoint(BROADCAST, 1, "tcp"), good], stagger=0.05)
            try:
                assert transport.endpoint == good
            finally:
                transport.close()
