"""Fuzz the key-method-2 parser: whatever the bytes, only RemoteProtocolError may escape.

Run (atheris is not a project dependency; install it into the venv first):

    pip install atheris
    python fuzz/fuzz_keymethod.py -max_len=2048 -runs=1000000

Anything parsed successfully must survive a build/parse round trip unchanged, so the
harness also checks that the parser and the builder agree.
"""

from __future__ import annotations

import sys

from trivpn.errors import LocalProtocolError, RemoteProtocolError
from trivpn.tlssession.keymethod import build_key_method_2, parse_key_method_2


def test_one_input(data: bytes) -> None:
    """One fuzz case: the first byte picks the role, the rest is the record."""
    if not data:
        return
    from_client = bool(data[0] & 1)
    try:
        msg = parse_key_method_2(data[1:], from_client=from_client)
    except RemoteProtocolError:
        return
    try:
        rebuilt = build_key_method_2(msg)
    except LocalProtocolError:
        return  # e.g. an empty options string or a record over 2048 bytes: we would not send it
    assert parse_key_method_2(rebuilt, from_client=from_client) == msg


def main() -> None:
    import atheris  # imported lazily: only the fuzz run needs it

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
