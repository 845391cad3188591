"""The kill switch: while the client runs, nothing leaves but the tunnel and the way to the server.

Theory of operation
-------------------
Routes alone cannot keep a VPN from failing open: between two sessions, after an error, or
while the first session is still being negotiated, a packet that finds no tunnel route takes
the ordinary default route. With `--kill-switch` (or `setenv opt trivpn-kill-switch` in the
profile) the client installs an nftables table of its own, `inet trivpn_killswitch`, whose
`output` and `forward` chains drop (policy drop) everything except:

* packets out of the loopback interface and out of the TUN (whatever the TUN's state);
* packets to the VPN server in use: its address, port and protocol (for a proxied
  connection: the proxy's), widened to every address of a name while happy eyeballs races
  them and narrowed to the one that answered;
* for the few seconds in which the client resolves a remote's name (or, once per run,
  the host names of the profile's routes), DNS (port 53) — IP literals never open this;
* what keeps the physical link itself alive: DHCP (v4 and v6) and IPv6 router/neighbour
  discovery. None of these carry the user's traffic.

`ruleset` (pure) writes the whole table as one `nft -f -` script that deletes and recreates
it in a single transaction, so a change never leaves a moment without the table. The table's
comment names the process that owns it: at the next start a table whose owner is gone (a
run that was SIGKILLed or crashed) is reported and replaced, or removed when the new run has
no kill switch; a table whose owner still runs belongs to another client and is left alone.
`KillSwitch` runs the scripts (through `run_nft`, injectable for tests) and removes the
table on every exit path (the engine registers `stop` as a cleanup).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence

from trivpn.errors import ConfigError, SessionRestart
from trivpn.records import dataclass

__all__ = ["TABLE", "Hole", "KillSwitch", "NftRunner", "remove_stale_table", "ruleset", "run_nft", "table_owner"]

log = logging.getLogger("trivpn")

#: the nftables table (family inet: IPv4 and IPv6)
TABLE = "trivpn_killswitch"
#: how long one `nft` call may take
NFT_TIMEOUT = 10.0
_COMMENT = "trivpn kill switch, pid {pid}"
_OWNER = re.compile(r'comment "trivpn kill switch, pid (\d+)"')
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")

#: runs one nft script (or, with `script` None, `nft list table`) → (exit code, output)
NftRunner = Callable[[list[str], str | None], tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Hole:
    """Traffic the kill switch lets out to the physical network: to one server endpoint."""

    address: str
    port: int
    proto: str  # "udp" or "tcp"


def _hole_rule(hole: Hole) -> str:
    try:
        ip = ipaddress.ip_address(hole.address)
    except ValueError:
        raise ConfigError(f"kill switch: {hole.address!r} is not an IP address") from None
    proto = hole.proto[:3]
    if proto not in ("udp", "tcp") or not 0 < hole.port < 65536:
        raise ConfigError(f"kill switch: cannot allow {proto} port {hole.port}")
    family = "ip" if ip.version == 4 else "ip6"
    return f"{family} daddr {ip} {proto} dport {hole.port} accept"


def ruleset(tun: str, holes: Sequence[Hole], *, dns: bool = False, owner: int | None = None) -> str:
    """The nft script that (re)creates the table in one transaction (see the module doc)."""
    if not _IFNAME.match(tun):
        raise ConfigError(f"kill switch: {tun!r} is not an interface name")
    allow = ['oifname "lo" accept', f'oifname "{tun}" accept']
    allow += sorted({_hole_rule(h) for h in holes})
    allow += [
        "udp sport 68 udp dport 67 accept",  # DHCPv4 (keeps the link's own address)
        "meta nfproto ipv6 udp dport 547 accept",  # DHCPv6
        "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept",
    ]
    if dns:
        allow += ["udp dport 53 accept", "tcp dport 53 accept"]
    comment = _COMMENT.format(pid=os.getpid() if owner is None else owner)
    body = "\n".join(f"\t\t{rule}" for rule in allow)
    return (
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        f'\tcomment "{comment}"\n'
        "\tchain output {\n"
        "\t\ttype filter hook output priority filter; policy drop;\n"
        f"{body}\n"
        '\t\tcounter comment "dropped by the kill switch"\n'
        "\t}\n"
        "\tchain forward {\n"
        "\t\ttype filter hook forward priority filter; policy drop;\n"
        f'\t\toifname "{tun}" accept\n'
        f'\t\tiifname "{tun}" accept\n'
        '\t\tcounter comment "dropped by the kill switch"\n'
        "\t}\n"
        "}\n"
    )


def run_nft(args: list[str], script: str | None) -> tuple[int, str]:
    """Run `nft ARGS` (with `script` on stdin); ConfigError if nft is missing or hangs."""
    nft = shutil.which("nft")
    if nft is None:
        raise ConfigError("the kill switch needs nftables: `nft` was not found (apt install nftables)")
    try:
        r = subprocess.run(
            [nft, *args], input=script, capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"kill switch: running nft failed: {exc}") from None
    return r.returncode, (r.stdout + r.stderr).strip()


def _pid_is_trivpn(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"trivpn" in f.read()
    except OSError:
        return False


def table_owner(run: NftRunner = run_nft) -> tuple[bool, int | None]:
    """(the table exists, the pid named in its comment)."""
    rc, out = run(["list", "table", "inet", TABLE], None)
    if rc != 0:
        return False, None
    m = _OWNER.search(out)
    return True, int(m.group(1)) if m else None


def _stale(run: NftRunner) -> bool | None:
    """None: no table; True: left by a run that is gone; False: owned by a live client."""
    exists, pid = table_owner(run)
    if not exists:
        return None
    return not (pid is not None and pid != os.getpid() and _pid_is_trivpn(pid))


def remove_stale_table(run: NftRunner = run_nft) -> bool:
    """At the start of a run without a kill switch: remove a table a crashed run left behind
    (True if one was removed). Quiet when nft is not installed: then there can be none."""
    if run is run_nft and shutil.which("nft") is None:
        return False
    if not _stale(run):
        return False
    log.warning("removing the kill switch table (%s) a previous trivpn run left behind", TABLE)
    rc, out = run(["delete", "table", "inet", TABLE], None)
    if rc != 0:
        log.warning("could not remove the stale kill switch table: %s", out)
    return rc == 0


class KillSwitch:
    """The kill switch of one client run on TUN `tun` (see the module docstring)."""

    def __init__(self, tun: str, run: NftRunner = run_nft) -> None:
        self.tun = tun
        self._run = run
        self.holes: tuple[Hole, ...] = ()
        self.dns = False
        self.active = False

    def use_runner(self, run: NftRunner) -> None:
        """Run nft through `run` from now on (after a privilege drop: the root helper)."""
        self._run = run

    def start(self) -> None:
        """Install the table (no server allowed yet); replace one a crashed run left."""
        stale = _stale(self._run)
        if stale is False:
            exists, pid = table_owner(self._run)
            raise ConfigError(
                f"another trivpn client (pid {pid}) has its kill switch on; only one can run at a time"
            )
        if stale:
            log.warning("replacing the kill switch table (%s) a previous trivpn run left behind", TABLE)
        self._write(self.holes, self.dns, first=True)
        self.active = True
        log.info("kill switch on: only the tunnel (%s) and the VPN server can be reached", self.tun)

    def allow(self, holes: Sequence[Hole]) -> None:
        """Let out exactly these server endpoints (no change, no nft call)."""
        new = tuple(sorted(set(holes), key=lambda h: (h.address, h.port, h.proto)))
        if new != self.holes:
            if self.active:
                self._write(new, self.dns)
            self.holes = new

    def allow_dns(self, on: bool) -> None:
        """Open (or close) port 53 while the client resolves a remote's or a route's name."""
        if on != self.dns:
            if self.active:
                self._write(self.holes, on)
            self.dns = on

    def _write(self, holes: Sequence[Hole], dns: bool, *, first: bool = False) -> None:
        rc, out = self._run(["-f", "-"], ruleset(self.tun, holes, dns=dns))
        if rc != 0:
            reason = f"kill switch: nft refused the table: {out.splitlines()[0] if out else rc}"
            if first:
                raise ConfigError(reason)
            # the previous table stays in force (nft applies a script whole or not at all):
            # fail closed and try again later rather than end the run and drop the table
            raise SessionRestart(reason)

    def stop(self) -> None:
        """Remove the table (a cleanup: never raises)."""
        if not self.active:
            return
        self.active = False
        try:
            rc, out = self._run(["delete", "table", "inet", TABLE], None)
        except Exception as exc:
            log.error("could not remove the kill switch table %s: %s", TABLE, exc)
            return
        if rc != 0:
            log.error("could not remove the kill switch table %s: %s", TABLE, out)
        else:
            log.info("kill switch off")
