"""`python -m trivpn` entry point."""

from __future__ import annotations

import sys

from trivpn.cli import main

if __name__ == "__main__":
    sys.exit(main())
