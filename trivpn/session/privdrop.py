"""`user`/`group`: `trivpn connect` gives up root once the tunnel is up.

Why this shape (see docs/architecture.md, "Privilege drop"): two parts.

* The engine process (TLS, the control channel, every parser of network input, the
  scripts) becomes the profile's user and group, keeping only CAP_NET_ADMIN:
  `prctl(PR_SET_KEEPCAPS)`, `setgroups`/`setgid`/`setuid`, then `capset` to that one
  capability (ctypes; no new dependency). The TUN fd and the sockets stay open.
* Just before that, a *privileged helper* is forked. It inherits the run's `TunApplier`
  (the routes it added, the resolv.conf backup or systemd-resolved link) and is the only
  part that still changes the host: it applies a new `NetPlan` when a reconnect brings
  different settings and undoes everything at exit. It reads small JSON requests from a
  socketpair (never pickle: the requests come from the less privileged side) and, when
  the engine dies in any way (its end of the socket closes, even after SIGKILL), it
  restores routes and DNS itself and exits. So DNS restore, which needs to write
  /etc/resolv.conf or talk to systemd-resolved as root, keeps working after the drop.

Scripts that run after the drop (`route-up`/`ipchange` on reconnects, `route-pre-down`
and `down` at exit) run as the user, as OpenVPN's do; the first `up`/`route-up` run
before it, as root. trivpn always keeps the TUN and the keys across reconnects
(`persist-tun`/`persist-key` semantics), so nothing ever needs root again to reopen them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import grp
import json
import logging
import os
import pwd
import signal
import socket
import time
from typing import Any

from trivpn.errors import ConfigError
from trivpn.profile.model import Profile
from trivpn.session.netapply import TunApplier
from trivpn.session.netsettings import DnsSettings, NetPlan
from trivpn.tun.netconfig import TunConfig

__all__ = ["CAP_NET_ADMIN", "HelperLink", "PrivDrop", "plan_from_json", "plan_to_json"]

log = logging.getLogger("trivpn")

CAP_NET_ADMIN = 12
_PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
#: Largest request or reply on the helper socket (a plan with hundreds of routes fits).
MAX_MESSAGE = 256 * 1024
#: Seconds the engine waits for the helper to answer.
HELPER_TIMEOUT = 20.0


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


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
        None if dns is None else DnsSettings(tuple(dns["servers"]), tuple(dns["domains"]), bool(dns["default_route"])),
        d.get("block_ipv6_source"),
    )


class HelperLink:
    """The engine's end: what `TunApplier` calls instead of touching the host itself."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        sock.settimeout(HELPER_TIMEOUT)

    def _call(self, request: dict[str, Any], payload: bytes = b"") -> None:
        head = json.dumps(request).encode()
        try:
            self.sock.send(head + b"\n" + payload)
            reply = json.loads(self.sock.recv(MAX_MESSAGE) or b'{"error": "the privileged helper is gone"}')
        except (OSError, ValueError) as exc:
            raise ConfigError(f"privileged helper: {exc}") from None
        if reply.get("error"):
            raise ConfigError(f"privileged helper: {reply['error']}")

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


def _serve(sock: socket.socket, applier: TunApplier) -> None:
    """The helper's loop (in the forked child, still root): requests until EOF."""
    sock.settimeout(None)
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
    """The profile's `user`/`group`, resolved at start; `drop` does the rest once."""

    def __init__(self, uid: int, gid: int, name: str) -> None:
        self.uid, self.gid, self.name = uid, gid, name
        self.helper: HelperLink | None = None

    @classmethod
    def from_profile(cls, profile: Profile) -> PrivDrop | None:
        if profile.user is None and profile.group is None:
            return None
        if os.geteuid() != 0:
            raise ConfigError("'user'/'group' need trivpn connect to start as root")
        try:
            pw = pwd.getpwnam(profile.user) if profile.user else pwd.getpwuid(0)
        except KeyError:
            raise ConfigError(f"user {profile.user!r} does not exist") from None
        try:
            gid = grp.getgrnam(profile.group).gr_gid if profile.group else pw.pw_gid
        except KeyError:
            raise ConfigError(f"group {profile.group!r} does not exist") from None
        return cls(pw.pw_uid, gid, f"{profile.user or 'root'}:{profile.group or pw.pw_gid}")

    def drop(self, applier: TunApplier) -> None:
        """Fork the privileged helper for `applier`, then become the user with CAP_NET_ADMIN."""
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
                _serve(theirs, applier)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.helper = HelperLink(ours, pid)
        applier.hand_over(self.helper)
        _become(self.uid, self.gid, keep=(CAP_NET_ADMIN,))
        log.info("dropped privileges to %s (keeping CAP_NET_ADMIN); routes and DNS via helper pid %d",
                 self.name, pid)


def _become(uid: int, gid: int, keep: tuple[int, ...]) -> None:
    """setgroups/setgid/setuid keeping only the capabilities in `keep` (this thread)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = mask >> 32
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")
    libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0)
