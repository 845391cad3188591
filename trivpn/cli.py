"""Command line: `trivpn connect PROFILE`, `trivpn ping PROFILE TARGET`, `trivpn serve CONFIG`.

Every failure ends with one line naming the cause (exit 1); a wrong flag ends with one
line too (exit 2). Tracebacks are only shown with `--debug`.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, NoReturn

import trio

from trivpn import __version__
from trivpn.errors import ConfigError, TrivpnError

if TYPE_CHECKING:  # imported lazily at run time so that `trivpn --help` starts fast
    from trivpn.profile.profile import Profile

log = logging.getLogger("trivpn")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{stamp} {prefix}{record.getMessage()}"


def _setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("trivpn")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    root.propagate = False


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trivpn", description="An OpenVPN 2.6 compatible VPN client on trio.")
    p.add_argument("--version", action="version", version=f"trivpn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("profile", metavar="PROFILE", help="an OpenVPN client profile (.ovpn)")
        sp.add_argument("-v", "--verbose", action="count", default=0, help="more detail")
        sp.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        sp.add_argument(
            "--key-derivation",
            choices=("auto", "ekm", "prf"),
            default="auto",
            help="data-key derivation to offer: TLS-EKM (default when the server agrees) or the TLS1-PRF",
        )
        fam = sp.add_mutually_exclusive_group()
        fam.add_argument("-4", "--ipv4", dest="family", action="store_const", const=4, help="use IPv4 only")
        fam.add_argument("-6", "--ipv6", dest="family", action="store_const", const=6, help="use IPv6 only")
        sp.add_argument(
            "--no-reconnect", action="store_true", help="exit when the session ends instead of reconnecting"
        )
        sp.add_argument("--auth-user", default="", help=argparse.SUPPRESS)
        sp.add_argument("--auth-password", default="", help=argparse.SUPPRESS)

    c = sub.add_parser("connect", help="bring up a tunnel on a TUN device (needs root)")
    common(c)
    c.add_argument(
        "--no-dns",
        action="store_true",
        help="leave the system's DNS alone (by default pushed DNS servers are applied "
        "through systemd-resolved or /etc/resolv.conf while connected)",
    )
    c.add_argument(
        "--no-data-threads",
        action="store_true",
        help="move data packets in trio tasks instead of the two data-plane threads (UDP only)",
    )
    c.add_argument(
        "--low-latency",
        action="store_true",
        help="lower idle round-trip times by keeping the data path warm for 0.1 s after "
        "traffic (costs CPU while traffic is sporadic; UDP with data threads only)",
    )
    pg = sub.add_parser("ping", help="ping through a userspace tunnel (no root, no TUN)")
    common(pg)
    pg.add_argument("target", metavar="TARGET", help="IPv4 or IPv6 address inside the tunnel")
    pg.add_argument("-c", "--count", type=int, default=4, help="echo requests to send (default 4)")
    pg.add_argument("-i", "--interval", type=float, default=1.0, help="seconds between requests")
    pg.add_argument("-W", "--timeout", type=float, default=2.0, help="seconds to wait for the last reply")
    pg.add_argument("-s", "--size", type=int, default=56, help="payload bytes (default 56)")
    pg.add_argument(
        "--connect-timeout", type=float, default=60.0, help="give up if no tunnel within this (default 60 s)"
    )
    _add_plugin_commands(sub, common)
    return p


#: Modules that add sub-commands: each has `add_commands(sub, common)` registering parsers
#: with `set_defaults(handler=async_fn)`. Kept light at import time (no heavy imports at the
#: top of those modules) so `trivpn connect` starts fast.
PLUGIN_COMMANDS = ("trivpn.reverse.cli", "trivpn.manager.cli", "trivpn.server.cli")


def _add_plugin_commands(sub: argparse._SubParsersAction[_Parser], common: object) -> None:
    import importlib

    for name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # that feature is not part of this build
            raise
        module.add_commands(sub, common)


def _load(path: str) -> Profile:
    from trivpn.profile.profile import load_profile

    profile = load_profile(path)
    for w in profile.warnings:
        log.warning("%s", w)
    return profile


def _credentials(profile: object, args: argparse.Namespace) -> tuple[str, str]:
    """Username/password from the flags, the profile's auth-user-pass, or a prompt; with
    `static-challenge` the response is asked for and folded into the password."""
    import getpass

    def need_tty(what: str) -> None:
        if not sys.stdin.isatty():
            raise ConfigError(f"the profile asks for {what} and there is no terminal to prompt on")

    if args.auth_user:
        user, password = args.auth_user, args.auth_password
    else:
        aup = getattr(profile, "auth_user_pass", None)
        if isinstance(aup, tuple):
            user, password = aup
        elif aup is True:
            need_tty("a username and password (auth-user-pass)")
            user = input("Username: ")
            password = getpass.getpass("Password: ")
        else:
            return "", ""
    challenge = getattr(profile, "static_challenge", None)
    if challenge is not None:
        text, echo = challenge
        need_tty(f"a response to the static challenge {text!r}")
        response = input(f"{text} ") if echo else getpass.getpass(f"{text} ")
        password = static_challenge_password(password, response)
    return user, password


def static_challenge_password(password: str, response: str) -> str:
    """OpenVPN's static-challenge encoding: SCRV1:base64(password):base64(response)."""
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return f"SCRV1:{b64(password)}:{b64(response)}"


async def cmd_connect(args: argparse.Namespace) -> int:
    from trivpn.engine import Engine, kernel_tun
    from trivpn.session.config import SessionConfig

    profile = _load(args.profile)
    profile.no_dns = profile.no_dns or args.no_dns
    username, password = _credentials(profile, args)
    config = SessionConfig.from_profile(
        profile,
        no_reconnect=args.no_reconnect,
        data_threads=not args.no_data_threads,
        low_latency=args.low_latency,
        family=args.family,
        key_derivation=args.key_derivation,
        username=username,
        password=password,
    )
    device = kernel_tun()
    engine = Engine(config, device, configure_tun=True, handle_signals=True)
    await engine.run()
    log.info("disconnected (%s); %s removed", engine.stop_reason or "stopped", device.name)
    return 0


async def cmd_ping(args: argparse.Namespace) -> int:
    from trivpn.api import connect
    from trivpn.tun.ip import build_echo_request, parse_echo_reply

    if args.count < 1 or args.count > 100000:
        raise ConfigError("--count must be between 1 and 100000")
    if not (0.01 <= args.interval <= 3600) or not (0 < args.timeout <= 3600):
        raise ConfigError("--interval must be 0.01..3600 s and --timeout 0..3600 s")
    if not 0 <= args.size <= 1400:
        raise ConfigError("--size must be between 0 and 1400")
    try:
        target = ipaddress.ip_address(args.target)
    except ValueError:
        raise ConfigError(f"TARGET must be an IP address, not {args.target!r}") from None
    profile = _load(args.profile)
    username, password = _credentials(profile, args)
    async with connect(
        profile,
        key_derivation=args.key_derivation,
        username=username,
        password=password,
        reconnect=not args.no_reconnect,
        connect_timeout=args.connect_timeout,
        family=args.family,
    ) as tunnel:
        s = tunnel.settings
        if target.version == 4:
            src = s.ifconfig_local
        else:
            src = str(ipaddress.IPv6Interface(s.ifconfig_ipv6_local).ip) if s.ifconfig_ipv6_local else None
        if not src:
            raise ConfigError(f"the server pushed no IPv{target.version} address to ping from")
        ident = os.getpid() & 0xFFFF
        payload = bytes(range(256)) * (args.size // 256 + 1)
        payload = payload[: args.size]
        print(f"PING {target} from {src} through the tunnel: {args.size} data bytes", flush=True)
        sent_at: dict[int, float] = {}
        rtts: list[float] = []
        dup = 0
        start = trio.current_time()

        async def receiver() -> None:
            nonlocal dup
            while True:
                pkt = await tunnel.receive()
                reply = parse_echo_reply(pkt)
                if reply is None or reply.ident != ident or reply.src != str(target):
                    continue
                t0 = sent_at.get(reply.seq)
                if t0 is None:
                    continue
                if reply.seq in seen:
                    dup += 1
                    continue
                seen.add(reply.seq)
                rtt = (trio.current_time() - t0) * 1000
                rtts.append(rtt)
                print(
                    f"{len(reply.payload) + 8} bytes from {reply.src}: icmp_seq={reply.seq} "
                    f"ttl={reply.ttl} time={rtt:.2f} ms",
                    flush=True,
                )
                if len(seen) == args.count:
                    return

        seen: set[int] = set()
        async with trio.open_nursery() as nursery:

            async def run_receiver() -> None:
                await receiver()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run_receiver)
            for seq in range(1, args.count + 1):
                sent_at[seq] = trio.current_time()
                await tunnel.send(build_echo_request(src, str(target), ident, seq, payload))
                if seq < args.count:
                    await trio.sleep(args.interval)
            await trio.sleep(args.timeout)
            nursery.cancel_scope.cancel()
        elapsed = (trio.current_time() - start) * 1000
    received = len(rtts)
    loss = 100.0 * (args.count - received) / args.count
    print(f"--- {target} ping statistics ---")
    extra = f", +{dup} duplicates" if dup else ""
    print(
        f"{args.count} packets transmitted, {received} received{extra}, "
        f"{loss:.0f}% packet loss, time {elapsed:.0f}ms"
    )
    if rtts:
        import statistics  # only `trivpn ping` needs it (start-up time of `connect`)

        mdev = statistics.pstdev(rtts) if len(rtts) > 1 else 0.0
        print(
            f"rtt min/avg/max/mdev = {min(rtts):.3f}/{statistics.fmean(rtts):.3f}/"
            f"{max(rtts):.3f}/{mdev:.3f} ms"
        )
    return 0 if received else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0))
    from trivpn.workers.manager import primary_error

    handler = getattr(args, "handler", None) or {"connect": cmd_connect, "ping": cmd_ping}[args.command]
    try:
        rc: int = trio.run(handler, args)
        return rc
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:  # one line, never a traceback (unless --debug)
        if isinstance(exc, SystemExit):
            raise
        err = primary_error(exc)
        if getattr(args, "debug", False):
            raise
        if isinstance(err, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
            return 130
        if isinstance(err, TrivpnError):
            msg = str(err)
        elif isinstance(err, OSError):
            msg = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
        else:
            msg = f"internal error: {type(err).__name__}: {err} (run with --debug for details)"
        print(f"trivpn: error: {msg}", file=sys.stderr)
        return 1



