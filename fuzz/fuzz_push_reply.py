"""Fuzz PUSH_REPLY reassembly and pushed-option parsing: only RemoteProtocolError.

Run (needs ``pip install atheris``)::

    python fuzz/fuzz_push_reply.py -max_total_time=300 -max_len=2048

The input is split on NUL bytes into successive control messages, as they would
arrive on the control channel, and each is fed to one PushReplyAssembler.
"""

from __future__ import annotations

import sys

from trivpn.errors import RemoteProtocolError
from trivpn.profile.push import PushReplyAssembler, parse_push_options


def test_one_input(data: bytes) -> None:
    """Feed every NUL-separated message; parse each completed option list."""
    asm = PushReplyAssembler()
    for raw in data.split(b"\0")[:16]:
        message = raw.decode("latin-1")
        for candidate in (message, "PUSH_REPLY," + message):
            try:
                options = asm.feed(candidate)
            except RemoteProtocolError:
                continue
            if options is None:
                continue
            try:
                settings = parse_push_options(options)
            except RemoteProtocolError:
                continue
            settings.ipv4_interface()


def main() -> None:
    import atheris  # lazy: only the fuzzer needs it

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
