"""Throw-away Linux network namespaces joined by a veth pair, for integration tests.

Why namespaces: a real OpenVPN server and a real client (ours or Debian's) each get their
own routing table, TUN devices and addresses, so the tests exercise the kernel exactly as a
user's machine would, without touching the host's network. Every namespace created here is
deleted in a ``finally`` block, together with any process still running inside it, so a
failing or interrupted test leaves nothing behind.

Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2's ``ip``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any

from trivpn.records import dataclass

#: Addresses of the veth link between the two namespaces (the "internet" of the tests).
SERVER_V4 = "10.201.0.1"
CLIENT_V4 = "10.201.0.2"
LINK_V4_PREFIX = 24
SERVER_V6 = "fd00:201::1"
CLIENT_V6 = "fd00:201::2"
LINK_V6_PREFIX = 64
#: Name of the veth end inside each namespace (names are per namespace, so both can match).
VETH_NAME = "veth0"
#: Seconds to let leftover processes exit on SIGTERM before they get SIGKILL at teardown.
KILL_GRACE = 2.0
#: Upper bound for any single `ip` housekeeping command.
IP_TIMEOUT = 10.0


class NetnsCommandError(subprocess.CalledProcessError):
    """A command inside a namespace failed; unlike the base class, `str()` shows its stderr."""

    def __str__(self) -> str:
        err = self.stderr if isinstance(self.stderr, str) else (self.stderr or b"").decode()
        out = self.stdout if isinstance(self.stdout, str) else (self.stdout or b"").decode()
        tail = (err or out).strip()[-2000:]
        return f"{super().__str__()}\n{tail}" if tail else super().__str__()


def _ip(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGV` in the current (host) namespace."""
    r = subprocess.run(
        ["ip", *argv], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
    )
    if check and r.returncode != 0:
        raise NetnsCommandError(r.returncode, ["ip", *argv], r.stdout, r.stderr)
    return r


@dataclass(slots=True)
class Netns:
    """One named network namespace (as listed by `ip netns list`)."""

    name: str

    def _argv(self, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, str | bytes):
            raise TypeError("argv must be a sequence of arguments, not a string")
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 30, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it (bounded by `timeout`).

        Output is captured as text unless the caller passes its own `stdout`/`stderr`/`text`.
        """
        cmd = self._argv(argv)
        if "stdout" not in kw and "stderr" not in kw and "capture_output" not in kw:
            kw["capture_output"] = True
        kw.setdefault("text", True)
        r: subprocess.CompletedProcess[str] = subprocess.run(
            cmd, timeout=timeout, check=False, **kw
        )
        if check and r.returncode != 0:
            raise NetnsCommandError(r.returncode, cmd, r.stdout, r.stderr)
        return r

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a command inside the namespace without waiting; the caller must reap it."""
        return subprocess.Popen(self._argv(argv), **kw)

    def pids(self) -> list[int]:
        """Process ids currently running inside the namespace."""
        r = _ip(["netns", "pids", self.name], check=False)
        return [int(p) for p in r.stdout.split() if p.isdigit()]


@dataclass(slots=True)
class NetnsPair:
    """Two namespaces joined by one veth link (`veth0` on each side)."""

    server: Netns
    client: Netns
    server_v4: str = SERVER_V4
    client_v4: str = CLIENT_V4
    server_v6: str = SERVER_V6
    client_v6: str = CLIENT_V6


def _kill_all(ns: Netns) -> None:
    """Stop whatever our tests left running in `ns`, so deleting it really frees it.

    A namespace whose file is unmounted stays alive while a process is inside it, and so
    would its TUN devices; hence SIGTERM, a short bounded wait, then SIGKILL.
    """
    pids = ns.pids()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + KILL_GRACE
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = ns.pids()
        if not pids:
            return


def _delete(name: str) -> None:
    """Delete namespace `name` if it exists, after ending its processes; never raises."""
    if not os.path.exists(f"/run/netns/{name}") and not os.path.exists(f"/var/run/netns/{name}"):
        return
    with contextlib.suppress(Exception):
        _kill_all(Netns(name))
    with contextlib.suppress(Exception):
        _ip(["netns", "del", name], check=False)


def _setup(pair: NetnsPair) -> None:
    s, c = pair.server.name, pair.client.name
    _ip(["netns", "add", s])
    _ip(["netns", "add", c])
    # Create the veth pair straight inside the namespaces, so no name ever exists on the host.
    _ip(["-n", s, "link", "add", VETH_NAME, "type", "veth", "peer", "name", VETH_NAME, "netns", c])
    for ns, v4, v6 in ((s, pair.server_v4, pair.server_v6), (c, pair.client_v4, pair.client_v6)):
        # IPv6 is on by default in a fresh namespace, unless the host changed the default.
        pair_ns = Netns(ns)
        pair_ns.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0"], check=False)
        pair_ns.run(["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=0"], check=False)
        _ip(["-n", ns, "link", "set", "lo", "up"])
        _ip(["-n", ns, "addr", "add", f"{v4}/{LINK_V4_PREFIX}", "dev", VETH_NAME])
        # nodad: the address is usable at once instead of "tentative" for ~2 s.
        _ip(["-n", ns, "addr", "add", f"{v6}/{LINK_V6_PREFIX}", "dev", VETH_NAME, "nodad"])
        _ip(["-n", ns, "link", "set", VETH_NAME, "up"])


@contextlib.contextmanager
def netns_pair(prefix: str = "tv") -> Iterator[NetnsPair]:
    """Create two fresh namespaces joined by veth; delete both on exit, whatever happens."""
    tag = secrets.token_hex(4)
    pair = NetnsPair(server=Netns(f"{prefix}-{tag}-s"), client=Netns(f"{prefix}-{tag}-c"))
    try:
        _setup(pair)
        yield pair
    finally:
        # Also reached on KeyboardInterrupt and on a half-finished _setup.
        _delete(pair.client.name)
        _delete(pair.server.name)


@contextlib.contextmanager
def second_client(
    pair: NetnsPair, server_v4: str = "10.201.1.1", client_v4: str = "10.201.1.2", index: int = 1
) -> Iterator[Netns]:
    """One more namespace joined to `pair.server` by its own veth (`veth<index>` on the
    server's side, `veth0` in the new one), for tests that need several client machines.
    Deleted on exit with whatever runs in it; deleting it also removes `veth<index>` from
    the server. Each `index` needs its own link addresses."""
    suffix = "d" if index == 1 else f"d{index}"
    ns = Netns(f"{pair.client.name[:-2]}-{suffix}")
    server_dev = f"veth{index}"
    try:
        _ip(["netns", "add", ns.name])
        _ip(["-n", pair.server.name, "link", "add", server_dev, "type", "veth",
             "peer", "name", VETH_NAME, "netns", ns.name])
        _ip(["-n", ns.name, "link", "set", "lo", "up"])
        for name, dev, addr in ((pair.server.name, server_dev, server_v4), (ns.name, VETH_NAME, client_v4)):
            _ip(["-n", name, "addr", "add", f"{addr}/{LINK_V4_PREFIX}", "dev", dev])
            _ip(["-n", name, "link", "set", dev, "up"])
        yield ns
    finally:
        _delete(ns.name)
