"""`user`/`group`: `trivpn connect` gives up root once the TUN exists, before any network input.

Why this shape (see docs/architecture.md, "Privilege drop"): two processes.

* The engine process (TLS, the control channel, every parser of network input, the
  scripts after the first tunnel) becomes the profile's user and group, keeping only
  CAP_NET_ADMIN: `prctl(PR_SET_KEEPCAPS)`, `setgroups`/`setgid`/`setuid`, then `capset`
  to that one capability (`trivpn serve`'s switch, trivpn.server.privdrop). The TUN fd stays open. This
  happens when the run starts, right after the TUN was created and a crashed run's DNS
  was restored: the first TLS handshake already runs unprivileged.
* Just before that, a *privileged helper* is forked. It inherits the run's `TunApplier`
  and is the only part that changes the host: it applies each `NetPlan` (the first one
  too), undoes routes and DNS at exit, and runs the first tunnel's `ipchange`/`up`/
  `route-up` as root (OpenVPN runs them before its drop), each at most once, only the
  profile's own command, with an environment reduced to OpenVPN's variable names. It
  reads small JSON requests from a socketpair (never pickle: they come from the less
  privileged side) and, when the engine dies in any way (its end of the socket closes,
  even after SIGKILL), restores routes and DNS itself and exits. So DNS restore, which
  needs to write /etc/resolv.conf or talk to systemd-resolved as root, keeps working.

Scripts after the first tunnel (`route-up`/`ipchange` on reconnects, `route-pre-down` and
`down` at exit) run as the user, as OpenVPN's do. trivpn always keeps the TUN and the keys
across reconnects (`persist-tun`/`persist-key` semantics), so nothing needs root again to
reopen them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

from trivpn.errors import ConfigError
from trivpn.profile.model import Profile
from trivpn.server.privdrop import PrivilegeDrop
from trivpn.session.killswitch import TABLE, KillSwitch, run_nft
from trivpn.session.netapply import TunApplier
from trivpn.session.netsettings import DnsSettings, NetPlan
from trivpn.session.scripts import SCRIPT_TIMEOUT, ScriptRunner
from trivpn.tun.tunplan import TunConfig

__all__ = ["HelperLink", "PrivDrop", "plan_from_json", "plan_to_json"]

log = logging.getLogger("trivpn")

#: Largest request or reply on the helper socket (a plan with hundreds of routes fits).
MAX_MESSAGE = 256 * 1024
#: Seconds the engine waits for the helper to answer (a root script gets its own time on top).
HELPER_TIMEOUT = 20.0
#: The scripts the helper runs as root, each once: the first tunnel's.
ROOT_SCRIPTS = frozenset({"ipchange", "up", "route-up"})
#: Variable names a root script may get from the engine: OpenVPN's (no LD_*, PATH, BASH_ENV...).
_SCRIPT_ENV = re.compile(
    r"(script_type|script_context|dev|dev_type|tun_mtu|config|daemon|daemon_pid|daemon_start_time"
    r"|daemon_log_redirect|verb|common_name|redirect_gateway|signal|ifconfig_[a-z0-9_]+|route_[a-z0-9_]+"
    r"|foreign_option_[0-9]+|dns_[a-z0-9_]+|(un)?trusted_(ip|port)6?|remote_[0-9]+|remote_port_[0-9]+"
    r"|proto_[0-9]+|tls_[a-z0-9_]+|X509_[0-9]+_[A-Za-z0-9_.]+)"
)



def plan_to_json(plan: NetPlan) -> bytes:
    return json.dumps(dataclasses.asdict(plan)).encode()


def plan_from_json(data: bytes) -> NetPlan:
    """The helper's side: a plan rebuilt field by field (a bad one is a ValueError)."""
    d = json.loads(data)
    if not isinstance(d, dict) or not isinstance(d.get("tun"), dict):
        raise ValueError("not a plan")
    t: dict[str, Any] = dict(d["tun"])
    known = {f.name for f in dataclasses.fields(TunConfig)}
    if set(t) - known:
        raise ValueError(f"unknown fields {sorted(set(t) - known)}")
    for key in ("ipv4", "ipv6"):
        if t.get(key) is not None:
            t[key] = tuple(t[key])
    for key in ("routes", "routes6"):
        t[key] = [tuple(r) for r in t.get(key, [])]
    t["redirect_nets6"] = tuple(t.get("redirect_nets6", ()))
    dns = d.get("dns")
    return NetPlan(
        TunConfig(**t),
        None if dns is None else DnsSettings(
            tuple(dns["servers"]), tuple(dns["domains"]), bool(dns["default_route"]),
            tuple(dns.get("routing_domains", ())),
        ),
        d.get("block_ipv6_source"),
    )


class HelperLink:
    """The engine's end: what `TunApplier` calls instead of touching the host itself."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self._lock = threading.Lock()  # scripts are asked from a worker thread

    def _call(
        self, request: dict[str, Any], payload: bytes = b"", timeout: float = HELPER_TIMEOUT
    ) -> dict[str, Any]:
        head = json.dumps(request).encode()
        with self._lock:
            try:
                self.sock.settimeout(timeout)
                self.sock.send(head + b"\n" + payload)
                reply = json.loads(self.sock.recv(MAX_MESSAGE) or b'{"error": "the privileged helper is gone"}')
            except (OSError, ValueError) as exc:
                raise ConfigError(f"privileged helper: {exc}") from None
        if not isinstance(reply, dict):
            raise ConfigError("privileged helper: a malformed answer")
        if reply.get("error"):
            raise ConfigError(f"privileged helper: {reply['error']}")
        return reply

    def reaching(self, addresses: Sequence[str]) -> None:
        """The server's host routes follow the addresses about to be used (serverroute.py)."""
        self._call({"op": "reaching", "addresses": list(addresses)})

    def run_nft(self, args: list[str], script: str | None) -> tuple[int, str]:
        """The kill switch's nft calls, made by the helper (an NftRunner)."""
        reply = self._call({"op": "nft", "args": args}, (script or "").encode() if script is not None else b"",
                           timeout=HELPER_TIMEOUT)
        return int(reply.get("rc", 1)), str(reply.get("out", ""))

    def run_script(self, kind: str, argv: list[str], env: dict[str, str]) -> str | None:
        """One of the first tunnel's scripts, run as root by the helper; the problem or None."""
        try:
            self._call({"op": "script", "kind": kind, "argv": argv, "env": env},
                       timeout=SCRIPT_TIMEOUT + HELPER_TIMEOUT)
        except ConfigError as exc:
            return str(exc).removeprefix("privileged helper: ")
        return None

    def apply(self, plan: NetPlan) -> None:
        self._call({"op": "apply"}, plan_to_json(plan))

    def undo_net(self) -> None:
        self._quiet({"op": "undo-net"})

    def undo_dns(self) -> None:
        self._quiet({"op": "undo-dns"})

    def _quiet(self, request: dict[str, Any]) -> None:
        try:
            self._call(request)
        except ConfigError as exc:  # cleanups never raise
            log.warning("%s", exc)

    def close(self) -> None:
        """End the helper (it undoes what is left) and reap it, bounded in time."""
        self.sock.close()
        for _ in range(200):
            try:
                pid, _status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            time.sleep(0.05)


def _root_script(runner: ScriptRunner | None, done: set[str], request: dict[str, Any]) -> str | None:
    """Run one of the first tunnel's scripts as root, if it is the profile's own; the problem."""
    kind, argv, env = request.get("kind"), request.get("argv"), request.get("env")
    if runner is None or kind not in ROOT_SCRIPTS or kind in done or not runner.has(str(kind)):
        return f"no root script {kind!r} to run"
    command = shlex.split(runner.commands[str(kind)])
    if (not isinstance(argv, list) or not all(isinstance(a, str) and "\0" not in a for a in argv)
            or argv[: len(command)] != command or len(argv) > len(command) + 8):
        return "refused: not the profile's command"
    if not isinstance(env, dict):
        return "refused: bad environment"
    allowed = {name for name, _ in runner.profile.setenv}
    clean = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    for name, value in env.items():
        if (isinstance(value, str) and "\0" not in value
                and (name in allowed or _SCRIPT_ENV.fullmatch(str(name)))):
            clean[str(name)] = value
    done.add(str(kind))
    try:
        r = subprocess.run(argv, env=clean, check=False, stdin=subprocess.DEVNULL, timeout=runner.timeout)
    except subprocess.TimeoutExpired:
        return f"did not finish within {runner.timeout:g} s and was killed"
    except OSError as exc:
        return f"could not be run: {exc.strerror or exc}"
    return None if r.returncode == 0 else f"exited with status {r.returncode}"


#: The nft calls the kill switch makes; nothing else is run for the engine.
_NFT_CALLS = (["-f", "-"], ["delete", "table", "inet", TABLE], ["list", "table", "inet", TABLE])


def _nft(args: object, payload: bytes) -> dict[str, Any]:
    """One kill-switch nft call as root: only its three forms, only its own table."""
    if args not in _NFT_CALLS:
        return {"error": "refused: not a kill switch nft call"}
    script: str | None = None
    if args == ["-f", "-"]:
        script = payload.decode("utf-8", "replace")
        tables = re.findall(r"\btable\s+(\S+)\s+(\S+)", script)
        if "include" in script or "ruleset" in script or not tables or any(
            t != ("inet", TABLE) for t in tables
        ):
            return {"error": "refused: the script must only touch the kill switch's table"}
    assert isinstance(args, list)
    rc, out = run_nft(args, script)
    return {"rc": rc, "out": out[:4000]}


def _serve(sock: socket.socket, applier: TunApplier, runner: ScriptRunner | None = None) -> None:
    """The helper's loop (in the forked child, still root): requests until EOF."""
    sock.settimeout(None)
    done: set[str] = set()
    while True:
        try:
            data = sock.recv(MAX_MESSAGE)
        except OSError:
            break
        if not data:
            break
        head, _, payload = data.partition(b"\n")
        reply: dict[str, Any] = {}
        try:
            op = json.loads(head).get("op")
            if op == "apply":
                applier.apply(plan_from_json(payload))
            elif op == "undo-net":
                applier.undo_net()
            elif op == "undo-dns":
                applier.undo_dns()
            elif op == "reaching":
                addresses = json.loads(head).get("addresses")
                if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
                    raise ValueError("bad addresses")
                applier.reaching(addresses)
            elif op == "nft":
                reply.update(_nft(json.loads(head).get("args"), payload))
            elif op == "script":
                problem = _root_script(runner, done, json.loads(head))
                if problem is not None:
                    reply["error"] = problem
            else:
                reply["error"] = f"unknown request {op!r}"
        except Exception as exc:  # the answer says what failed; the helper stays up
            reply["error"] = f"{type(exc).__name__}: {exc}"
        try:
            sock.send(json.dumps(reply).encode())
        except OSError:
            break
    applier.undo_net()
    applier.undo_dns()


class PrivDrop:
    """The profile's `user`/`group`, resolved at start; `drop` does the rest once.

    The uid/gid switch keeping CAP_NET_ADMIN is `trivpn serve`'s (trivpn.server.privdrop);
    what is added here is the helper that keeps root for the host changes."""

    def __init__(self, switch: PrivilegeDrop) -> None:
        self.switch = switch
        self.helper: HelperLink | None = None

    @classmethod
    def from_profile(cls, profile: Profile) -> PrivDrop | None:
        if profile.user is None and profile.group is None:
            return None
        if os.geteuid() != 0:
            raise ConfigError("'user'/'group' need trivpn connect to start as root")
        return cls(PrivilegeDrop(profile.user, profile.group))  # unknown names: ConfigError

    def drop(
        self, applier: TunApplier, runner: ScriptRunner | None = None, kill_switch: KillSwitch | None = None
    ) -> None:
        """Fork the privileged helper for `applier` (the first tunnel's scripts of `runner`,
        the nft calls of `kill_switch`), then become the user with CAP_NET_ADMIN."""
        if self.helper is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the helper: root, a plain blocking loop, never back into trio
            code = 0
            try:
                ours.close()
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)
                applier.use_pyroute2()  # the helper's netlink work goes through pyroute2
                _serve(theirs, applier, runner)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        _preload()
        self.helper = HelperLink(ours, pid)
        applier.hand_over(self.helper)
        if runner is not None:
            runner.privileged = self.helper.run_script
        if kill_switch is not None:
            kill_switch.use_runner(self.helper.run_nft)
        self.switch.drop()
        log.info("dropped privileges; routes, DNS and the first scripts via the root helper (pid %d)", pid)


#: Modules imported lazily on the session path. They are loaded while still root: the user
#: may not be able to read the Python installation (e.g. one under /root). Legacy CBC is
#: imported when a CBC key is made, and the first key exchange comes after the drop.
_LAZY_MODULES = ("encodings.idna", "trivpn.controlchannel.wrap", "trivpn.datachannel.cbc")


def _preload() -> None:
    import importlib

    from trivpn import lazystdlib

    for name in _LAZY_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
    lazystdlib.resolve()  # the stand-ins too (CBC's HMAC and the management password use hmac)
