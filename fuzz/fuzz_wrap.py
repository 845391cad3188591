"""atheris harness for tls-auth / tls-crypt unwrapping.

Invariants: for each wrapper, unwrapping arbitrary bytes raises only RemoteProtocolError (a
forgery is never accepted); and wrapping arbitrary bytes of at least the 9-byte header, then
unwrapping them on the peer, gives the same bytes back.

Run (atheris is optional and imported only here)::

    python -m pip install atheris
    python fuzz/fuzz_wrap.py -max_total_time=300 [corpus_dir]
"""

from __future__ import annotations

import sys

from trivpn.controlchannel.wrap import StaticKey, TLSAuth, TLSCrypt
from trivpn.errors import RemoteProtocolError

KEY = StaticKey(bytes((i * 37 + 11) % 256 for i in range(256)))


def _pair(mode: int) -> tuple[TLSAuth | TLSCrypt, TLSAuth | TLSCrypt]:
    """(client, server) wrappers, fresh per input so runs stay independent."""
    if mode == 0:
        return TLSAuth(KEY, 1, timestamp=1), TLSAuth(KEY, 0, timestamp=2)
    if mode == 1:
        return TLSAuth(KEY, 1, "SHA256", timestamp=1), TLSAuth(KEY, 0, "SHA256", timestamp=2)
    return TLSCrypt(KEY, timestamp=1), TLSCrypt(KEY, server=True, timestamp=2)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    client, server = _pair(data[0] % 3)
    body = data[1:]
    try:
        server.unwrap(body, 0.0)
    except RemoteProtocolError:
        pass
    else:
        raise AssertionError(f"forged packet accepted: {body.hex()}")
    if len(body) >= 9:
        if server.unwrap(client.wrap(body, 0.0), 0.0) != body:
            raise AssertionError("wrap/unwrap round trip failed")


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
