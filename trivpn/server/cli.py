"""`trivpn serve CONFIG`: an OpenVPN 2.6 server configuration, served in the foreground.

Plugged into trivpn.cli like the other sub-commands (only argparse at import time). Errors
end with one line and exit 1, as `connect`; SIGINT/SIGTERM stop gracefully (clients are
told, the TUN with its addresses and routes is removed) and exit 0, and so do SIGHUP/SIGUSR1
(no reload: one line says so), SIGUSR2 logs the status report. These act at any time of
the start-up: `__main__` keeps them from its first line (cli_common.StartupSignals) and the
server's workers manager acts on them once it listens (a SIGHUP/SIGUSR1 by then stops the
server before it sets anything up).
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("trivpn")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: object) -> None:
    s = sub.add_parser("serve", help="serve OpenVPN clients from an OpenVPN server config (needs root)")
    s.add_argument("config", metavar="CONFIG", help="an OpenVPN 2.6 server configuration")
    s.add_argument("-v", "--verbose", action="count", default=0, help="more detail")
    s.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    s.add_argument("--metrics-addr", metavar="HOST:PORT", help="serve Prometheus metrics here")
    s.set_defaults(handler=cmd_serve)


async def cmd_serve(args: argparse.Namespace) -> int:
    from trivpn import cli_common
    from trivpn.server.config import load_server_config
    from trivpn.server.service import Server

    config = load_server_config(args.config)
    metrics = None
    if args.metrics_addr:
        from trivpn.observe.serving import parse_host_port

        metrics = parse_host_port(args.metrics_addr, "--metrics-addr")
    kept = cli_common.STARTUP_SIGNALS  # set by __main__
    server = Server(config, handle_signals=True, metrics_addr=metrics, kept_signals=kept.take if kept else None)
    for warning in (*config.warnings, *server.warnings):
        log.warning("%s", warning)
    await server.run()
    if server.tun_name is None:  # a signal during start-up: nothing was set up
        log.info("stopped (%s) before start-up finished", server.manager.stop_reason or "stopped")
    else:
        log.info("stopped (%s); %s removed", server.manager.stop_reason or "stopped", server.tun_name)
    return 0
