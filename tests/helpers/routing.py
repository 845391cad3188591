"""Kernel routing tables of a client namespace, and OpenVPN's own client to compare with.

Why: issue 13 asks that `trivpn connect` sets exactly the routes OpenVPN 2.6's client sets
for the same profile and server. These helpers give the client namespace a realistic
shape (the server sits behind a default gateway, not on the client's link), run Debian's
`openvpn` as a client, and read `ip route` in a form where two runs can be compared.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

from trivpn.testing.netns import NetnsPair
from trivpn.testing.process import wait_until

__all__ = ["REMOTE_V4", "internet_shape", "reference_client", "routes", "tun_name"]

#: The server's address "on the internet": on its loopback, reached via the client's default route.
REMOTE_V4 = "10.201.9.1"
READY = "Initialization Sequence Completed"
CLIENT_TIMEOUT = 20.0


def internet_shape(netns: NetnsPair) -> str:
    """Put the server behind the client's default gateway; return the server's address."""
    netns.server.run(["ip", "addr", "add", f"{REMOTE_V4}/32", "dev", "lo"])
    netns.client.run(["ip", "route", "add", "default", "via", netns.server_v4])
    return REMOTE_V4


def tun_name(ns_run_output: str) -> str | None:
    """The TUN device in `ip -o link show type tun` output (None if there is none)."""
    for line in ns_run_output.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            return parts[1].strip()
    return None


def routes(netns: NetnsPair) -> list[str]:
    """`ip route` and `ip -6 route` of the client, the TUN renamed `TUN`, sorted.

    Left out: who installed a route (`proto static` for trivpn, none for OpenVPN's boot
    routes) and the veth's and TUN's link-local and multicast routes, which the kernel
    adds by itself.
    """
    dev = tun_name(netns.client.run(["ip", "-o", "link", "show", "type", "tun"]).stdout)
    out: list[str] = []
    for family in ("-4", "-6"):
        for line in netns.client.run(["ip", family, "route"]).stdout.splitlines():
            if line.startswith(("fe80::", "ff00::", "multicast")):
                continue
            if dev:
                line = re.sub(rf"\b{re.escape(dev)}\b", "TUN", line)
            line = re.sub(r" proto (static|boot)\b", "", line)
            out.append(f"{family} " + " ".join(line.split()))
    return sorted(out)


@contextlib.contextmanager
def reference_client(netns: NetnsPair, profile: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Debian's openvpn client on `profile` in the client namespace, up until the block ends."""
    proc = netns.client.popen(
        ["openvpn", "--config", str(profile), "--log", str(log)],
        cwd=profile.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"openvpn client exited with {proc.returncode}:\n{_tail(log)}")
        return log.exists() and READY in log.read_text(errors="replace")

    try:
        wait_until(ready, CLIENT_TIMEOUT, "openvpn client start")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
