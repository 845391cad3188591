"""`networkio.transport.resolve`: what a client's remote resolves to, and what resolving a
numeric address costs at start-up (numeric addresses only: no lookup leaves the machine)."""

from __future__ import annotations

import socket

import pytest
import trio
from helpers.fresh import fresh_stdout

from trivpn.networkio.transport import ResolveError, resolve


async def test_numeric_addresses_and_local_names() -> None:
    (v4,) = await resolve("127.0.0.1", 1194, "udp")
    assert (v4.host, v4.port, v4.proto, v4.family, v4.sockaddr) == (
        "127.0.0.1", 1194, "udp", socket.AF_INET, ("127.0.0.1", 1194))
    (v6,) = await resolve("::1", 443, "tcp6")
    assert v6.family == socket.AF_INET6 and v6.sockaddr[:2] == ("::1", 443) and v6.proto == "tcp"
    with pytest.raises(ResolveError, match="cannot resolve '127.0.0.1'"):  # an IPv4 address, udp6
        await resolve("127.0.0.1", 1194, "udp6")


async def test_names_go_to_the_resolver_as_bytes_unless_they_need_idna(monkeypatch: pytest.MonkeyPatch) -> None:
    """No lookup leaves the machine here (the tests' network rule): the resolver is replaced
    by one that records what it was asked and fails like a name that does not exist."""
    asked: list[object] = []

    async def fake(host: object, *_args: object) -> list[object]:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(trio.socket, "getaddrinfo", fake)
    for name in ("vpn.example.net", "bücher.example"):
        with pytest.raises(ResolveError, match=f"cannot resolve {name!r}: Name or service not known"):
            await resolve(name, 1194, "udp")
    assert asked == [b"vpn.example.net", "bücher.example"]  # trio encodes the second (IDNA)


async def test_a_name_the_idna_codec_refuses_is_a_one_line_error() -> None:
    """Refused before any lookup is sent (an empty label), so nothing leaves the machine;
    it used to escape as a UnicodeError (an internal error, not a config one)."""
    with pytest.raises(ResolveError, match=r"cannot resolve 'bü\.\.example': not a valid host name"):
        await resolve("bü..example", 1194, "udp")


def test_a_numeric_remote_does_not_load_the_idna_codec() -> None:
    """The standard library's getaddrinfo runs a str host through the "idna" codec (and
    imports `encodings.idna` and `stringprep` for it) even when it is an IP address."""
    code = (
        "import sys, trio\n"
        "from trivpn.networkio.transport import resolve\n"
        "trio.run(resolve, '127.0.0.1', 1194, 'udp')\n"
        "print(sorted(m for m in ('encodings.idna', 'stringprep') if m in sys.modules))\n"
    )
    assert fresh_stdout(code) == "[]"
