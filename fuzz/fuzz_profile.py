"""Fuzz the .ovpn profile parser: any input may only raise ConfigError.

Run (needs ``pip install atheris``)::

    python fuzz/fuzz_profile.py -max_total_time=300 -max_len=4096

File references are resolved against a directory that does not exist, so relative
names never hit real files; absolute names are read only if they are small regular
files (the parser refuses devices and FIFOs).
"""

from __future__ import annotations

import sys
from pathlib import Path

from trivpn.errors import ConfigError
from trivpn.profile.options import tokenize_line
from trivpn.profile.profile import parse_profile

NOWHERE = Path("/nonexistent-trivpn-fuzz-dir")


def test_one_input(data: bytes) -> None:
    """Parse ``data`` as profile text and as a single option line."""
    text = data.decode("utf-8", errors="replace")
    try:
        profile = parse_profile(text, base_dir=NOWHERE)
    except ConfigError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"multi-line error message: {exc!r}") from None
    else:
        if not profile.remotes or profile.ca is None:
            raise AssertionError("accepted a profile without remote or ca")
    try:
        tokenize_line(text.split("\n", 1)[0])
    except ConfigError:
        pass


def main() -> None:
    import atheris  # lazy: only the fuzzer needs it

    atheris.instrument_all()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
