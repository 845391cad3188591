"""The profile's scripts (`up`, `down`, `route-up`, `route-pre-down`, `ipchange`), as OpenVPN runs them.

Why OpenVPN's exact arguments and environment: users keep scripts written for OpenVPN
(update-resolv-conf, update-systemd-resolved, firewall hooks) and those key on
`$script_type`, `$dev`, `$ifconfig_local`, `$foreign_option_N` and the positional
arguments. `script_env` / `script_argv` are pure (the test compares them with what Debian's
openvpn hands the same script); `ScriptRunner` runs one with `trio.run_process`, bounded in
time, with nothing but the built environment (no inherited variables, no shell).

Rules kept from OpenVPN 2.6:
* `script-security` 0/1 forbid external programs: a configured `up`/`down` is then a
  configuration error (OpenVPN fails when it tries to run it), `route-up`,
  `route-pre-down` and `ipchange` are skipped with one warning. Level 3 adds nothing on a
  client (trivpn never puts the password in a script's environment).
* A failing `up` (non-zero exit, not runnable, over time) ends the run; a failing `down`,
  `route-up`, `route-pre-down` or `ipchange` is logged.
* Only the profile's own commands run. A pushed option can never name a program: the
  PUSH_REPLY parser knows no script options, and nothing here reads the pushed options
  except the `dhcp-option` lines, which become `foreign_option_N` text.
* With `user`/`group`, the first tunnel's `ipchange`, `up` and `route-up` run as root (in
  the privileged helper, as OpenVPN runs them before its drop); every later script runs
  as the user (the engine process is that user), as with OpenVPN.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import field

import trio
from cryptography import x509
from cryptography.x509.oid import NameOID

from trivpn import digests
from trivpn.errors import ConfigError, FatalError
from trivpn.profile.model import Profile
from trivpn.profile.push import PushedSettings
from trivpn.records import dataclass
from trivpn.tlssession.tls import format_subject
from trivpn.tun.tunplan import TunConfig

__all__ = ["SCRIPT_TIMEOUT", "ClientScripts", "ScriptContext", "ScriptRunner", "net_gateway", "script_argv", "script_env"]

log = logging.getLogger("trivpn")

#: Seconds a script may run before it is killed (OpenVPN waits forever; a hung `up` would
#: hold the tunnel down with no message).
SCRIPT_TIMEOUT = 60.0
#: OpenVPN's X509 short names in `X509_N_<name>` variables.
_X509_NAMES = {
    NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "emailAddress", NameOID.SERIAL_NUMBER: "serialNumber",
}
KINDS = ("up", "down", "route-up", "route-pre-down", "ipchange")


@dataclass(slots=True)
class ScriptContext:
    """What a script learns about the tunnel: everything `script_env` turns into variables."""

    dev: str
    tun: TunConfig
    settings: PushedSettings
    profile: Profile
    remote_ip: str = ""
    remote_port: int = 0
    proto: str = "udp"
    peer_chain: tuple[bytes, ...] = ()
    net_gateway: str = "0.0.0.0"
    restart: bool = False
    signal: str = ""
    started: int = field(default_factory=lambda: int(time.time()))


def _mask(prefix: int) -> str:
    return str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)


def _vpn_gateway(ctx: ScriptContext) -> str | None:
    s, p = ctx.settings, ctx.profile
    gw = s.route_gateway if s.route_gateway not in (None, "dhcp") else None
    gw = gw or p.route_gateway
    if gw is None and ctx.tun.ipv4 is not None and ctx.tun.ipv4[2]:
        gw = ctx.tun.ipv4[2]
    return gw


def _colon_hex(data: bytes, upper: bool) -> str:
    text = ":".join(f"{b:02x}" for b in data)
    return text.upper() if upper else text


def _chain_env(env: dict[str, str], chain: Sequence[bytes]) -> None:
    for depth, der in enumerate(chain):
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            continue
        env[f"tls_id_{depth}"] = format_subject(cert.subject)
        env[f"tls_digest_{depth}"] = _colon_hex(digests.digest("sha1", der), False)
        env[f"tls_digest_sha256_{depth}"] = _colon_hex(digests.digest("sha256", der), False)
        serial = cert.serial_number
        env[f"tls_serial_{depth}"] = str(serial)
        env[f"tls_serial_hex_{depth}"] = _colon_hex(serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big"), False)
        for attr in cert.subject:
            name = _X509_NAMES.get(attr.oid, attr.oid.dotted_string)
            value = attr.value if isinstance(attr.value, str) else attr.value.hex()
            env[f"X509_{depth}_{name}"] = value
        if depth == 0:
            cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            if cns:
                cn = cns[-1].value
                env["common_name"] = cn if isinstance(cn, str) else cn.decode("utf-8", "replace")


def _pushed_dns(settings: PushedSettings) -> tuple[dict[int, list[str]], list[str]]:
    """2.6's pushed `dns server N address ...` and `dns search-domains ...`, as pushed."""
    servers: dict[int, list[str]] = {}
    search: list[str] = []
    for opt in settings.options:
        t = opt.split()
        if len(t) >= 3 and t[:2] == ["dns", "search-domains"]:
            search += t[2:]
        elif len(t) >= 5 and t[:2] == ["dns", "server"] and t[3] == "address":
            try:
                prio = int(t[2])
            except ValueError:
                continue
            servers.setdefault(prio, []).extend(t[4:])
    return servers, search


def _foreign_options(settings: PushedSettings) -> list[str]:
    """The pushed `dhcp-option` lines, as OpenVPN hands them to scripts (never commands).

    With 2.6's `dns` options pushed, OpenVPN replaces the `dhcp-option DNS`/`DOMAIN-SEARCH`
    lines by ones made from them (for scripts that only know `dhcp-option`)."""
    servers, search = _pushed_dns(settings)
    out = []
    for opt in settings.options:
        tokens = opt.split()
        if len(tokens) < 2 or tokens[0] != "dhcp-option":
            continue
        kind = tokens[1].upper()
        if (servers and kind in ("DNS", "DNS6")) or (search and kind == "DOMAIN-SEARCH"):
            continue
        out.append(" ".join(tokens))
    for prio in sorted(servers):
        for addr in servers[prio]:
            host, _port = _host_port(addr)
            out.append(f"dhcp-option {'DNS6' if ':' in host else 'DNS'} {host}")
    out += [f"dhcp-option DOMAIN-SEARCH {d}" for d in search]
    return out


def _host_port(addr: str) -> tuple[str, str | None]:
    """`10.0.0.1:53`, `[fd00::1]:53`, `fd00::1` or `10.0.0.1` as (host, port or None)."""
    if addr.startswith("[") and "]" in addr:
        host, _, rest = addr[1:].partition("]")
        return host, rest.removeprefix(":") or None
    if addr.count(":") == 1:
        host, _, port = addr.partition(":")
        return host, port
    return addr, None


def _dns_env(env: dict[str, str], settings: PushedSettings) -> None:
    """2.6's `dns_*` variables for the pushed `dns` options."""
    servers, search = _pushed_dns(settings)
    for i, d in enumerate(search, 1):
        env[f"dns_search_domain_{i}"] = d
    for prio, addrs in servers.items():
        for m, addr in enumerate(addrs, 1):
            host, port = _host_port(addr)
            env[f"dns_server_{prio}_address_{m}"] = host
            if port is not None:
                env[f"dns_server_{prio}_port_{m}"] = port
    resolve: dict[str, int] = {}
    for opt in settings.options:  # `dns server N resolve-domains ...` (split DNS), as pushed
        t = opt.split()
        if len(t) >= 5 and t[:2] == ["dns", "server"] and t[3] == "resolve-domains":
            for d in t[4:]:
                resolve[t[2]] = resolve.get(t[2], 0) + 1
                env[f"dns_server_{t[2]}_resolve_domain_{resolve[t[2]]}"] = d


def script_env(kind: str, ctx: ScriptContext, *, config: str = "", verb: int = 1) -> dict[str, str]:
    """OpenVPN 2.6's environment for script `kind` (see the module docstring)."""
    s, tun, p = ctx.settings, ctx.tun, ctx.profile
    env: dict[str, str] = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    env.update(p.setenv)
    env.update({
        "script_type": kind,
        "script_context": "restart" if ctx.restart else "init",
        "dev": ctx.dev,
        "dev_type": "tun",
        "tun_mtu": str(tun.mtu),
        "config": config,
        "daemon": "0",
        "daemon_pid": str(os.getpid()),
        "daemon_start_time": str(ctx.started),
        "daemon_log_redirect": "0",
        "verb": str(verb),
        "route_net_gateway": ctx.net_gateway,
    })
    if tun.ipv4 is not None:
        local, prefix, peer = tun.ipv4
        env["ifconfig_local"] = local
        if peer:
            env["ifconfig_remote"] = peer
        else:
            env["ifconfig_netmask"] = _mask(prefix)
    if tun.ipv6 is not None:
        env["ifconfig_ipv6_local"] = tun.ipv6[0]
        env["ifconfig_ipv6_netbits"] = str(tun.ipv6[1])
        if s.ifconfig_ipv6_remote:
            env["ifconfig_ipv6_remote"] = s.ifconfig_ipv6_remote
    gw = _vpn_gateway(ctx)
    if gw:
        env["route_vpn_gateway"] = gw
    for i, (net, via, metric) in enumerate(tun.routes, 1):
        n = ipaddress.IPv4Network(net)
        env[f"route_network_{i}"] = str(n.network_address)
        env[f"route_netmask_{i}"] = str(n.netmask)
        env[f"route_gateway_{i}"] = via or gw or ""
        if metric is not None:
            env[f"route_metric_{i}"] = str(metric)
    for i, (net6, via6, metric6) in enumerate(tun.routes6, 1):
        env[f"route_ipv6_network_{i}"] = net6
        env[f"route_ipv6_gateway_{i}"] = via6 or s.ifconfig_ipv6_remote or ""
        if metric6 is not None:
            env[f"route_ipv6_metric_{i}"] = str(metric6)
    # ipchange runs before OpenVPN processes the PUSH_REPLY: it sees the profile's lines
    foreign = list(p.dhcp_option_lines) if kind == "ipchange" else _foreign_options(s)
    for i, line in enumerate(foreign, 1):
        env[f"foreign_option_{i}"] = line
    if kind != "ipchange":
        _dns_env(env, s)
    if ctx.remote_ip:
        env["trusted_ip"] = env["untrusted_ip"] = ctx.remote_ip
        env["trusted_port"] = env["untrusted_port"] = str(ctx.remote_port)
    for i, r in enumerate(p.remotes, 1):
        env[f"remote_{i}"] = r.host
        env[f"remote_port_{i}"] = str(r.port)
        env[f"proto_{i}"] = r.proto
    _chain_env(env, ctx.peer_chain)
    if kind != "up":  # set from route-up on; OpenVPN's environment keeps it for down
        env["redirect_gateway"] = "1" if tun.redirect_gateway else "0"
    if kind in ("down", "route-pre-down") and ctx.signal:
        env["signal"] = ctx.signal
    return env


def script_argv(kind: str, command: str, ctx: ScriptContext) -> list[str]:
    """The command (split like OpenVPN splits it, no shell) plus OpenVPN's arguments."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"{kind} command {command!r} cannot be split into words: {exc}") from None
    if not argv:
        raise ConfigError(f"{kind}: empty command")
    if kind in ("up", "down", "route-pre-down"):
        local, other = "", ""
        if ctx.tun.ipv4 is not None:
            local = ctx.tun.ipv4[0]
            other = ctx.tun.ipv4[2] or _mask(ctx.tun.ipv4[1])
        argv += [ctx.dev, str(ctx.tun.mtu), "0", local, other, "restart" if ctx.restart else "init"]
    elif kind == "ipchange":
        family = "AF_INET6" if ":" in ctx.remote_ip else "AF_INET"
        argv.append(f"[{family}]{ctx.remote_ip} {ctx.remote_port}")
    return argv


def net_gateway(route_file: str = "/proc/net/route") -> str:
    """The IPv4 default gateway before the tunnel's routes (OpenVPN's route_net_gateway)."""
    try:
        with open(route_file) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return "0.0.0.0"
    for line in lines:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
            try:
                return str(ipaddress.IPv4Address(int(cols[2], 16).to_bytes(4, "little")))
            except ValueError:
                continue
    return "0.0.0.0"


class ScriptRunner:
    """Runs the profile's scripts for one client run (checked once, at start)."""

    def __init__(self, profile: Profile, *, timeout: float = SCRIPT_TIMEOUT) -> None:
        self.profile = profile
        self.timeout = timeout
        #: after a privilege drop: runs a script as root in the helper; returns the problem
        self.privileged: Callable[[str, list[str], dict[str, str]], str | None] | None = None
        self.commands: dict[str, str] = {k: v for k, v in profile.scripts.items() if v}
        level = profile.script_security
        if level < 2:
            for kind in ("up", "down"):
                if kind in self.commands:
                    raise ConfigError(
                        f"'{kind}' needs 'script-security 2' (level {level} allows no external programs)"
                    )
            for kind in list(self.commands):
                log.warning("'%s' is not run: 'script-security 2' or higher is needed", kind)
                del self.commands[kind]
        for kind, command in self.commands.items():
            script_argv(kind, command, ScriptContext("", TunConfig(), PushedSettings(), profile))

    def has(self, kind: str) -> bool:
        return kind in self.commands

    def _prepare(self, kind: str, ctx: ScriptContext) -> tuple[list[str], dict[str, str]]:
        argv = script_argv(kind, self.commands[kind], ctx)
        env = script_env(kind, ctx, config=self.profile.source or "", verb=self.profile.verb)
        return argv, env

    async def run(self, kind: str, ctx: ScriptContext, *, as_root: bool = False) -> None:
        """Run `kind` if configured; a failing `up` raises FatalError, others are logged.

        `as_root`: after a privilege drop, the privileged helper runs it (the first tunnel's
        scripts run as root, as in OpenVPN, where they come before the drop)."""
        if kind not in self.commands:
            return
        argv, env = self._prepare(kind, ctx)
        if as_root and self.privileged is not None:
            problem = await trio.to_thread.run_sync(self.privileged, kind, argv, env)
            self._report(kind, argv[0], problem)
            return
        problem = None
        with trio.move_on_after(self.timeout) as scope:
            try:
                r = await trio.run_process(argv, env=env, check=False, stdin=subprocess.DEVNULL)
                if r.returncode != 0:
                    problem = f"exited with status {r.returncode}"
            except OSError as exc:
                problem = f"could not be run: {exc.strerror or exc}"
        if scope.cancelled_caught:
            problem = f"did not finish within {self.timeout:g} s and was killed"
        self._report(kind, argv[0], problem)

    def run_sync(self, kind: str, ctx: ScriptContext) -> None:
        """The same, for cleanups (which are synchronous): `down`, `route-pre-down`."""
        if kind not in self.commands:
            return
        argv, env = self._prepare(kind, ctx)
        problem: str | None = None
        try:
            r = subprocess.run(argv, env=env, check=False, stdin=subprocess.DEVNULL, timeout=self.timeout)
            if r.returncode != 0:
                problem = f"exited with status {r.returncode}"
        except subprocess.TimeoutExpired:
            problem = f"did not finish within {self.timeout:g} s and was killed"
        except OSError as exc:
            problem = f"could not be run: {exc.strerror or exc}"
        self._report(kind, argv[0], problem)

    @staticmethod
    def _report(kind: str, program: str, problem: str | None) -> None:
        if problem is None:
            log.info("%s script %s ran", kind, program)
            return
        if kind == "up":
            raise FatalError(f"the up script {program} {problem}")
        log.warning("the %s script %s %s", kind, program, problem)


class ClientScripts:
    """When a client run calls each script (OpenVPN's order, with the TUN kept across sessions).

    First tunnel: `ipchange`, `up` (init), `route-up`; each later session: `ipchange` and
    `route-up` again (OpenVPN re-adds routes after a restart; `up` stays done because the
    TUN persists). On exit, from the workers manager's cleanups: `route-pre-down` before the
    routes go, `down` after them (both with `signal` set to why the run ended)."""

    def __init__(self, runner: ScriptRunner, add_cleanup: Callable[[Callable[[], None]], object],
                 stop_reason: Callable[[], str | None]) -> None:
        self.runner = runner
        self._add_cleanup = add_cleanup
        self._stop_reason = stop_reason
        self._ctx: ScriptContext | None = None
        if runner.has("down"):  # registered before the routes' undo, so it runs after it
            add_cleanup(lambda: self._at_exit("down"))

    async def tunnel_up(self, ctx: ScriptContext) -> None:
        first = self._ctx is None
        ctx.net_gateway = net_gateway()
        if not first:
            ctx.restart = True
        self._ctx = ctx
        await self.runner.run("ipchange", ctx, as_root=first)
        if first:
            await self.runner.run("up", ctx, as_root=True)
            if self.runner.has("route-pre-down"):
                self._add_cleanup(lambda: self._at_exit("route-pre-down"))
        await self.runner.run("route-up", ctx, as_root=first)

    def _at_exit(self, kind: str) -> None:
        ctx = self._ctx
        if ctx is None:
            return
        ctx.restart = False
        ctx.signal = _signal_name(self._stop_reason())
        self.runner.run_sync(kind, ctx)


def _signal_name(reason: str | None) -> str:
    """OpenVPN's `signal` value: the lower-case signal name, or why the run ended."""
    if reason and reason.upper().startswith("SIG"):
        return reason.lower()
    return "sigterm" if reason else "error"
