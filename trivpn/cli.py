"""Command line: `trivpn connect PROFILE`, `trivpn ping PROFILE TARGET`, `trivpn serve CONFIG`, ...

Every failure ends with one line naming the cause (exit 1; `ping` exits 2, like iputils'
ping, whose 1 means "no reply"); a wrong flag ends with one line too (exit 2). Tracebacks
are only shown with `--debug`. Every sub-command takes `-v`/`-vv`/`-q`/`--log FILE`
(trivpn.cli_common); docs/cli.md is the reference.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from trivpn import lazystdlib

lazystdlib.defer()  # before trio imports ssl and hmac: see trivpn/lazystdlib.py
lazystdlib.known_libraries()  # trio's one library lookup, without running ldconfig

import trio  # noqa: E402

from trivpn import __version__  # noqa: E402
from trivpn.cli_common import (  # noqa: E402
    TUNING_COMMANDS,
    check_tuning_env,
    finish_parsers,
    one_malloc_arena,
    setup_logging,
)
from trivpn.errors import ConfigError, TrivpnError  # noqa: E402

if TYPE_CHECKING:  # imported lazily at run time so that `trivpn --help` starts fast
    from collections.abc import Callable

    from trivpn.engine import Engine
    from trivpn.profile.profile import Profile

log = logging.getLogger("trivpn")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The sub-commands this module defines. Parsing one of them needs no plugin module.
CORE_COMMANDS = ("connect", "ping", "status")


def core_command(argv: list[str]) -> str | None:
    """The core command `argv` runs, if any: the root parser has no option taking a value,
    so a command is always the first word."""
    return argv[0] if argv and argv[0] in CORE_COMMANDS else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` (one of `CORE_COMMANDS`) the root with just
    that command: what `main` parses a core command with. Building every sub-command's
    parser (argparse looks up a translation for each help string) and importing the plugin
    modules took ≈ 14 ms of `trivpn connect`'s start on a slow day (docs/performance.md)."""
    p = _Parser(
        prog="trivpn",
        description="An OpenVPN 2.6 compatible VPN client and server on trio.",
        epilog="examples:\n  trivpn ping client.ovpn 10.8.0.1\n  sudo trivpn demo\n"
        "  trivpn pki init ./pki --name vpn.example.net\n  trivpn COMMAND --help\n"
        "exit status: 0 ok, 1 failure (ping: 1 no reply, 2 error), 2 wrong usage, 130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        sp.add_argument(
            "--auth-user",
            default="",
            help="username for auth-user-pass (the password comes from TRIVPN_PASSWORD or a prompt)",
        )
        sp.add_argument("--auth-password", default="", help=argparse.SUPPRESS)

    if only in (None, "connect"):
        _add_connect(sub, common)
    if only in (None, "ping"):
        _add_ping(sub, common)
    if only in (None, "status"):
        _add_status(sub)
    if only is None:
        _add_plugin_commands(sub, common)
    finish_parsers(p)
    return p


def _add_connect(sub: argparse._SubParsersAction[_Parser], common: Callable[[argparse.ArgumentParser], None]) -> None:
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
        help="move data packets in trio tasks instead of the data-plane threads",
    )
    c.add_argument(
        "--low-latency",
        action="store_true",
        help="lower round-trip times: keep the data path warm for 0.1 s after traffic "
        "(costs CPU while traffic is sporadic; UDP with data threads only) and never hold "
        "reads back to batch them under load",
    )
    c.add_argument(
        "--kill-switch",
        action="store_true",
        help="drop all traffic that is not to the VPN server or through the tunnel while "
        "trivpn runs, reconnecting included (nftables; also `setenv opt trivpn-kill-switch`)",
    )
    _observe_flags(c)


def _add_ping(sub: argparse._SubParsersAction[_Parser], common: Callable[[argparse.ArgumentParser], None]) -> None:
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


def _add_status(sub: argparse._SubParsersAction[_Parser]) -> None:
    st = sub.add_parser(
        "status", help="show a running instance's state through its management socket",
        description="Connects to the management interface of a running `trivpn connect` or "
        "`trivpn serve` and prints its state: remote, addresses, cipher, key id and age, bytes "
        "and packets both ways, drops by reason, last handshake, renegotiations (on a server: "
        "every client). Examples: `trivpn status /run/trivpn.sock`, "
        "`trivpn status 127.0.0.1:7505 --json`.",
    )
    st.add_argument("where", metavar="SOCKET|HOST:PORT", help="the management unix socket or TCP address")
    st.add_argument("--json", action="store_true", help="print JSON instead of text")
    st.add_argument("--password-file", help="file whose first line is the management password")
    st.add_argument("--timeout", type=float, default=10.0, help="give up after this many seconds")
    st.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    st.set_defaults(handler=_cmd_status)


def _observe_flags(sp: argparse.ArgumentParser) -> None:
    """Flags that mirror the profile's management/status options (a flag wins)."""
    g = sp.add_argument_group("watching it run")
    g.add_argument(
        "--management", metavar="HOST:PORT|PATH",
        help="OpenVPN management interface on a TCP address (loopback unless a password file "
        "is given) or a unix socket path",
    )
    g.add_argument("--management-password-file", metavar="FILE", help="management password (first line)")
    g.add_argument("--management-hold", action="store_true", help="wait for `hold release` before connecting")
    g.add_argument(
        "--management-query-passwords", action="store_true",
        help="ask the management client for the username/password",
    )
    g.add_argument("--auth-retry", choices=("none", "nointeract", "interact"), help="what AUTH_FAILED does")
    g.add_argument("--status", nargs="+", metavar=("FILE", "SECONDS"), help="write a status file every N s (60)")
    g.add_argument("--metrics-addr", metavar="HOST:PORT", help="serve Prometheus metrics here")


async def _cmd_status(args: argparse.Namespace) -> int:
    from trivpn.observe.statuscmd import run_status

    return await run_status(args)


#: Modules that add sub-commands: each has `add_commands(sub, common)` registering parsers
#: with `set_defaults(handler=async_fn)`. Kept light at import time (no heavy imports at the
#: top of those modules) so `trivpn connect` starts fast.
PLUGIN_COMMANDS = ("trivpn.reverse.cli", "trivpn.manager.cli", "trivpn.server.cli", "trivpn.pki.cli",
                   "trivpn.demo.cli")


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
    from trivpn.session.config import server_check_warning

    profile = load_profile(path)
    for w in profile.warnings:
        log.warning("%s", w)
    if (warning := server_check_warning(profile)) is not None:
        log.warning("%s", warning)
    return profile


#: Where `--auth-user` (and a prompting profile) take the password from, if set.
PASSWORD_ENV = "TRIVPN_PASSWORD"


def _credentials(profile: object, args: argparse.Namespace) -> tuple[str, str]:
    """Username/password from `--auth-user` (password from TRIVPN_PASSWORD or a prompt),
    the profile's auth-user-pass, or a prompt; with `static-challenge` the response is
    asked for and folded into the password. Never from the command line: argv is public."""

    def need_tty(what: str) -> None:
        if not sys.stdin.isatty():
            raise ConfigError(f"the profile asks for {what} and there is no terminal to prompt on")

    _refuse_password_flag(args)
    if args.auth_user:
        user = args.auth_user
        password = os.environ.get(PASSWORD_ENV, "")
        if not password:
            need_tty(f"a password for {user!r} (set {PASSWORD_ENV} or run on a terminal)")
            password = _getpass("Password: ")
    else:
        aup = getattr(profile, "auth_user_pass", None)
        if isinstance(aup, tuple):
            user, password = aup
        elif aup is True:
            need_tty("a username and password (auth-user-pass)")
            user = input("Username: ")
            password = os.environ.get(PASSWORD_ENV, "") or _getpass("Password: ")
        else:
            return "", ""
    challenge = getattr(profile, "static_challenge", None)
    if challenge is not None:
        text, echo = challenge
        need_tty(f"a response to the static challenge {text!r}")
        response = input(f"{text} ") if echo else _getpass(f"{text} ")
        password = static_challenge_password(password, response)
    return user, password


def _getpass(prompt: str) -> str:
    """`getpass.getpass`, imported only when a prompt is due (start-up time of `connect`)."""
    import getpass

    return getpass.getpass(prompt)


def _ask_key_passphrase(profile: Profile) -> None:
    """askpass without a file: prompt for the private key's passphrase (as OpenVPN does)."""
    if profile.askpass is True:
        import getpass

        if not sys.stdin.isatty():
            raise ConfigError("the profile asks for the private key's passphrase (askpass) and there is no terminal")
        profile.askpass = getpass.getpass("Private key passphrase: ")


def _reread_password(args: argparse.Namespace) -> str:
    """auth-nocache: the password again, as OpenVPN gets it (the file re-read, or a prompt)."""
    from trivpn.profile.profile import load_profile

    return _credentials(load_profile(args.profile), args)[1]


def _refuse_password_flag(args: argparse.Namespace) -> None:
    if getattr(args, "auth_password", None):
        raise ConfigError(
            "--auth-password is gone: a password on the command line is visible to every user "
            "(ps, /proc); use the profile's auth-user-pass file, TRIVPN_PASSWORD or the prompt"
        )


def static_challenge_password(password: str, response: str) -> str:
    """OpenVPN's static-challenge encoding: SCRV1:base64(password):base64(response)."""
    import base64

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return f"SCRV1:{b64(password)}:{b64(response)}"


async def cmd_connect(args: argparse.Namespace) -> int:
    from trivpn.engine import Engine, kernel_tun
    from trivpn.session.config import SessionConfig
    from trivpn.tunname import tun_name_for

    profile = _load(args.profile)
    profile.no_dns = profile.no_dns or args.no_dns
    _ask_key_passphrase(profile)
    observe = _observe_options(profile, args)
    query = observe is not None and observe[1].query_passwords
    if query and getattr(profile, "auth_user_pass", None) is True and not args.auth_user:
        username, password = "", ""  # asked through the management interface
    else:
        username, password = _credentials(profile, args)
        query = False
    config = SessionConfig.from_profile(
        profile,
        no_reconnect=args.no_reconnect,
        data_threads=not args.no_data_threads,
        low_latency=args.low_latency,
        family=args.family,
        key_derivation=args.key_derivation,
        username=username,
        password=password,
        reauth=lambda: _reread_password(args),
    )
    device = kernel_tun(tun_name_for(profile.dev_name))
    kill = args.kill_switch or profile.kill_switch
    monitor = observe[1] if observe is not None else None
    try:  # a refusal here (no remote can be reached, ...) must not leave the new TUN behind
        engine = Engine(
            config, device, configure_tun=True, handle_signals=True, observer=monitor, kill_switch=kill
        )
    except BaseException:
        device.close()
        raise
    if observe is None:
        async with trio.open_nursery() as nursery:
            await nursery.start(restart_on_signals, engine)
            await engine.run()
            nursery.cancel_scope.cancel()
    else:
        from trivpn.observe.connect import run_connect

        options, monitor = observe
        monitor.need_credentials(query)
        await run_connect(engine, monitor, options)
    log.info("disconnected (%s); %s removed", engine.stop_reason or "stopped", device.name)
    return 0


async def restart_on_signals(engine: Engine, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """`trivpn connect` without a monitor: SIGUSR1 and SIGHUP restart the session (as
    OpenVPN's client does, and as `trivpn.observe.connect` does with one), SIGUSR2 logs
    the counters. Before, the default action of SIGHUP/SIGUSR1 killed the process on the
    spot, leaving its DNS changes and kill-switch rules behind."""
    import signal

    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGHUP, signal.SIGUSR2) as signals:
        task_status.started()
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                name = signal.Signals(signum).name
                if name == "SIGUSR2":
                    log.info("%s", engine.client.counters_line() or "no session is up")
                else:
                    log.info("%s received, restarting the session", name)
                    nursery.start_soon(engine.restart_after_goodbye, name)


def _observe_options(profile: Profile, args: argparse.Namespace) -> tuple[Any, Any] | None:
    """(ObserveOptions, ClientMonitor) when management, a status file or metrics are asked
    for (profile or flags), else None: then nothing of trivpn.observe is imported."""
    base = os.path.dirname(os.path.abspath(profile.source)) if profile.source else os.getcwd()

    def rel(path: str) -> str:
        return path if os.path.isabs(path) else os.path.join(base, path)

    # profile values are relative to the profile's directory, flags to the working directory
    mgmt = profile.management
    if mgmt is not None:
        mgmt = (mgmt[0] if mgmt[1] is not None else rel(mgmt[0]), mgmt[1], rel(mgmt[2]) if mgmt[2] else None)
    if args.management:
        host, sep, port = args.management.rpartition(":")
        if sep and port.isascii() and port.isdigit():
            if not 0 < int(port) < 65536:  # the kernel would take it modulo 65536, silently
                raise ConfigError(f"--management port must be 1..65535, not {port}")
            mgmt = (host.strip("[]"), int(port), None)
        else:
            mgmt = (os.path.abspath(args.management), None, None)
    if mgmt is not None and args.management_password_file:
        mgmt = (mgmt[0], mgmt[1], os.path.abspath(args.management_password_file))
    status = (rel(profile.status[0]), float(profile.status[1])) if profile.status else None
    if args.status:
        if len(args.status) > 2 or (len(args.status) == 2 and not (args.status[1].isascii() and args.status[1].isdigit())):
            raise ConfigError("--status takes FILE [SECONDS]")
        status = (os.path.abspath(args.status[0]), float(args.status[1]) if len(args.status) == 2 else 60.0)
    if mgmt is None and status is None and not args.metrics_addr:
        return None
    from trivpn.observe.client import ClientMonitor
    from trivpn.observe.connect import ObserveOptions
    from trivpn.observe.serving import ManagementSpec, parse_host_port

    spec = ManagementSpec(*mgmt) if mgmt is not None else None
    metrics = parse_host_port(args.metrics_addr, "--metrics-addr") if args.metrics_addr else None
    options = ObserveOptions(spec, status, metrics)
    monitor = ClientMonitor(
        hold=spec is not None and (args.management_hold or profile.management_hold),
        query_passwords=spec is not None and (args.management_query_passwords or profile.management_query_passwords),
        auth_retry=args.auth_retry or profile.auth_retry or "none",
    )
    return options, monitor


async def cmd_ping(args: argparse.Namespace) -> int:
    from trivpn.api import connect
    from trivpn.tun.ip import build_echo_request, parse_echo_reply

    if args.count < 1 or args.count > 100000:
        raise ConfigError("--count must be between 1 and 100000")
    if not (0.01 <= args.interval <= 3600) or not (0 < args.timeout <= 3600):
        raise ConfigError("--interval must be 0.01..3600 s and --timeout 0..3600 s")
    if not 0 <= args.size <= 1400:
        raise ConfigError("--size must be between 0 and 1400")
    if not 0 < args.connect_timeout <= 86400:  # also refuses nan
        raise ConfigError("--connect-timeout must be more than 0 and at most 86400 s")
    try:
        target = ipaddress.ip_address(args.target)
    except ValueError:
        raise ConfigError(f"TARGET must be an IP address, not {args.target!r}") from None
    if getattr(target, "scope_id", None):  # replies (from the bare address) never matched it
        raise ConfigError(f"TARGET {args.target!r}: a %scope means nothing inside the tunnel")
    profile = _load(args.profile)
    _ask_key_passphrase(profile)
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


#: `ping` exits like iputils' ping: 0 replies, 1 no reply, 2 any error.
PING_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(core_command(argv)).parse_args(argv)
    failed = PING_ERROR if args.command == "ping" else 1
    try:
        setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False), getattr(args, "log", None),
                      tracebacks=getattr(args, "debug", False))
    except OSError as exc:
        print(f"trivpn: error: --log {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return failed
    from trivpn.workers.manager import primary_error

    if args.command == "connect":
        one_malloc_arena()  # before any thread exists (cli_common.one_malloc_arena)
    handler = getattr(args, "handler", None) or {"connect": cmd_connect, "ping": cmd_ping}[args.command]
    try:
        _refuse_password_flag(args)
        if args.command in TUNING_COMMANDS:
            check_tuning_env()
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
        if getattr(args, "log", None):  # the log file records how the run ended, too
            log.error("%s", msg)
        return failed
