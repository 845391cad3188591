"""`trivpn tunnel` (the unprivileged half) and `trivpn manage PROFILE` (both halves).

Kept light at import time: `trivpn connect` loads this module to list sub-commands.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable

log = logging.getLogger("trivpn")


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    t = sub.add_parser(
        "tunnel", help="serve a manager over the control protocol (started by a manager)"
    )
    t.add_argument("--rpc-read-fd", type=int, metavar="R", help="fd the manager's messages arrive on")
    t.add_argument("--rpc-write-fd", type=int, metavar="W", help="fd our messages leave on")
    t.add_argument("--rpc-socket", metavar="PATH", help="connect to the manager's Unix socket instead")
    t.add_argument(
        "--user", default=None,
        help="when started as root, switch to this user before serving (default nobody)",
    )
    t.add_argument(
        "--keep-user", action="store_true",
        help="stay the user we were started as (as root: the engine runs as root)",
    )
    t.add_argument("-v", "--verbose", action="count", default=0, help="forward debug logs too")
    t.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    t.set_defaults(handler=cmd_tunnel)

    m = sub.add_parser(
        "manage", help="bring up a tunnel through an unprivileged tunnel process (needs root)"
    )
    common(m)
    m.add_argument(
        "--tunnel-user", default=None, help="user the tunnel process runs as (default nobody)"
    )
    m.add_argument("--ifname", default="tvpn%d", help="TUN interface name (%%d: first free number)")
    m.set_defaults(handler=cmd_manage)


async def cmd_tunnel(args: argparse.Namespace) -> int:
    from trivpn.manager.process import (
        drop_privileges,
        open_rpc_stream,
        serve_manager,
        tunnel_identity,
    )

    if 1 in (args.rpc_read_fd, args.rpc_write_fd):
        _log_to_stderr()
    become = tunnel_identity(args.user, args.keep_user)  # before anything is opened
    stream = await open_rpc_stream(args.rpc_read_fd, args.rpc_write_fd, args.rpc_socket)
    if os.geteuid() == 0:
        if become is not None:
            drop_privileges(become)
        else:
            log.warning("--keep-user: the tunnel runs as root and parses network input as root")
    given = frozenset(fd for fd in (args.rpc_read_fd, args.rpc_write_fd) if fd is not None)
    await serve_manager(stream, verbose=args.verbose > 0, rpc_fds=given)
    return 0


def _log_to_stderr() -> None:
    """The manager made our stdout (fd 1) the protocol stream: log lines written there until
    the log is forwarded (with -v, "tunnel: protocol version 1.0" right after our header)
    became bytes inside the stream, which the manager had to refuse as a broken frame."""
    import sys

    for logger in (logging.getLogger("trivpn"), logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)


async def cmd_manage(args: argparse.Namespace) -> int:
    import signal

    import trio

    from trivpn.cli import _credentials, _load
    from trivpn.errors import ConfigError, FatalError
    from trivpn.manager import manager_pb2 as pb
    from trivpn.manager.process import tunnel_identity
    from trivpn.manager.session import open_tunnel

    # The shared client flags reach `manage` too, but StartRequest cannot carry these: they
    # were ignored without a word (an IPv4-only or no-reconnect run that was neither).
    for flag, given in (("-4/-6", args.family is not None), ("--no-reconnect", args.no_reconnect)):
        if given:
            raise ConfigError(f"{flag} is not supported by trivpn manage (use trivpn connect)")
    tunnel_identity(args.tunnel_user, False)  # --tunnel-user '': one line before any prompt
    profile = _load(args.profile)
    username, password = _credentials(profile, args)
    stop_reason: str | None = None

    async def watch_signals(scope: trio.CancelScope) -> None:
        nonlocal stop_reason
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                stop_reason = signal.Signals(signum).name
                log.info("%s received, stopping the tunnel", stop_reason)
                scope.cancel()  # leaving open_tunnel sends Stop and cleans up
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_signals, nursery.cancel_scope)
        async with open_tunnel(
            args.profile,
            username=username,
            password=password,
            key_derivation=args.key_derivation,
            tunnel_user=args.tunnel_user,
            ifname=args.ifname,
            verbose=args.verbose > 0,
        ) as tunnel:
            peer = tunnel.peer
            log.info(
                "managed tunnel up on %s: %s (tunnel process %d)",
                tunnel.ifname,
                ", ".join(peer.ip_addrs) if peer else "no addresses",
                tunnel.pid,
            )
            state = peer.state if peer else None
            async for update in tunnel.peer_updates():
                for p in update.upserted_peers:
                    if p.state != state and p.state not in (pb.Peer.CONNECTING, pb.Peer.CONNECTED):
                        state = p.state
                        log.info("peer %s: %s", p.name, pb.Peer.State.Name(p.state).lower())
                    if p.state in (pb.Peer.FAILED, pb.Peer.DISCONNECTED) and stop_reason is None:
                        raise FatalError(p.error_message or "the tunnel went down")
            if stop_reason is None:
                raise FatalError("the tunnel process ended")
        nursery.cancel_scope.cancel()
    log.info("disconnected (%s)", stop_reason or "stopped")
    return 0
