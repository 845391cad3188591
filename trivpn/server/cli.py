"""`trivpn serve CONFIG`: an OpenVPN 2.6 server configuration, served in the foreground.

Plugged into trivpn.cli like the other sub-commands (only argparse at import time). Errors
end with one line and exit 1, as `connect`; SIGINT/SIGTERM stop gracefully (clients are
told, the TUN with its addresses and routes is removed) and exit 0. SIGHUP restarts the
server in this process with the configuration file read again, SIGUSR1 with the one
already loaded (restart.py: a configuration no longer valid, or root given up by `user`,
ends it with exit 1 instead). SIGUSR2 logs the status report. These act at any time of the
start-up: `__main__` keeps them from its first line (cli_common.StartupSignals) and the
server's workers manager acts on them once it listens (a SIGHUP/SIGUSR1 by then restarts
the server before it set anything up).
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
    from trivpn.server.config_model import ServerConfig
    from trivpn.server.restart import serve_restarting
    from trivpn.server.service import Server

    config = load_server_config(args.config)
    metrics = None
    if args.metrics_addr:
        from trivpn.observe.serving import parse_host_port

        metrics = parse_host_port(args.metrics_addr, "--metrics-addr")
    keeper = cli_common.keep_startup_signals()  # set by __main__ already; here when called otherwise

    def start(cfg: ServerConfig) -> Server:
        server = Server(cfg, handle_signals=True, metrics_addr=metrics, kept_signals=keeper.take, restarts=True)
        for warning in (*cfg.warnings, *server.warnings):
            log.warning("%s", warning)
        return server

    return await serve_restarting(config, lambda: load_server_config(args.config), start, keeper)
