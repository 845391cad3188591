"""`trivpn demo` (plugged into trivpn.cli; only argparse at import time)."""

from __future__ import annotations

import argparse
import signal

EPILOG = """\
examples:
  sudo trivpn demo                  # PKI, server, client, ping, 3 s of iperf3, clean-up
  sudo trivpn demo --iperf-seconds 0 --keep   # no iperf3; keep the PKI and logs to look at
"""

#: Exit status after SIGTERM/SIGHUP stopped the demo (128 + SIGTERM, as a shell reports it).
EXIT_TERMINATED = 143


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: object) -> None:
    d = sub.add_parser(
        "demo",
        help="a VPN on this machine: PKI, trivpn serve and trivpn connect in two network "
        "namespaces, ping and iperf3 through the tunnel, then removed (needs root)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--iperf-seconds", type=int, default=3, metavar="S",
                   help="length of the iperf3 run if iperf3 is installed (0: skip; default 3)")
    d.add_argument("--keep", action="store_true", help="keep the temporary directory (PKI, configs, logs)")
    d.set_defaults(handler=cmd_demo)


async def cmd_demo(args: argparse.Namespace) -> int:
    import trio

    from trivpn.demo.run import run_demo, say
    from trivpn.errors import ConfigError

    if not 0 <= args.iperf_seconds <= 60:
        raise ConfigError("--iperf-seconds must be 0..60")
    stopped_by: list[int] = []
    rc = 1
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for signum in signals:
                    stopped_by.append(signum)
                    say(f"got {signal.Signals(signum).name}")
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            rc = await run_demo(iperf_seconds=args.iperf_seconds, keep=args.keep)
            nursery.cancel_scope.cancel()
    return EXIT_TERMINATED if stopped_by else rc
