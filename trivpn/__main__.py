"""`python -m trivpn` entry point (and the `trivpn` console script).

The command line is imported inside `main`, so that a Ctrl+C while the imports run (the
first ≈ 0.15 s of every start) ends in the same "interrupted" line and exit 130 as one
later, instead of a KeyboardInterrupt traceback. For the same reason `serve` keeps
SIGHUP/SIGUSR1/SIGUSR2 from here on for its workers manager (cli_common.StartupSignals):
before, one of them during its start-up ended it by the default action. Its restart loop
(server/restart.py) keeps SIGINT/SIGTERM too, once the configuration was first read."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        if sys.argv[1:2] == ["serve"]:  # the command is always the first word (cli.core_command)
            from trivpn.cli_common import keep_startup_signals

            keep_startup_signals()
        from trivpn.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
