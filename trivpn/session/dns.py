"""DNS for the tunnel: systemd-resolved per link, or /etc/resolv.conf with a crash-safe backup.

Theory of operation
-------------------
With redirect-gateway every packet goes through the tunnel, but a name lookup still asks
whatever resolver the system had: a leak, and often a broken one. So when the server (or
the profile) names DNS servers, `trivpn connect` puts them in place for the run:

* **systemd-resolved** (when it runs and /etc/resolv.conf hands lookups to it): the
  servers and domains go on the TUN link with ``resolvectl``; the pushed domains are
  search and routing domains (split DNS), and with redirect-gateway the link also gets
  ``~.`` and the default route, so every query goes there; without it, a pushed
  ``resolve-domains`` list makes ``~domain`` routing domains and only those names go to
  the tunnel (the split the server asked for). resolved forgets a link's
  settings when the link disappears, so a crash leaves nothing behind; on a clean exit
  ``resolvectl revert`` runs anyway.
* **/etc/resolv.conf** otherwise: the file is rewritten *in place* (it may be a bind
  mount, as ``ip netns exec`` makes it, where a rename cannot replace it). Before the
  first byte changes, a backup (the old bytes, the file's identity, our pid and a hash of
  what we wrote) is written atomically to the state directory. Every exit path restores
  the old bytes; after a crash (SIGKILL) the next start finds the backup of a dead run
  and restores it. We never overwrite a file someone else changed since we wrote it: its
  backup is dropped with a warning instead.

The text and command builders are pure and unit-tested; the classes only do the I/O.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from trivpn import digests
from trivpn.records import dataclass
from trivpn.session.netsettings import DnsSettings

__all__ = [
    "DnsConfigurator",
    "ResolvConf",
    "Resolved",
    "resolv_conf_text",
    "resolved_active",
    "resolvectl_commands",
]

log = logging.getLogger("trivpn")

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_DIR = Path("/run/systemd/resolve")
RESOLVED_STUB = "127.0.0.53"
#: Where backups live; it must outlive a reboot, since /etc/resolv.conf does.
STATE_DIR = Path(os.environ.get("TRIVPN_STATE_DIR", "/var/lib/trivpn"))
#: glibc reads at most this many nameserver lines (MAXNS).
MAX_NAMESERVERS = 3
#: glibc's search list limit (domains).
MAX_SEARCH = 6
#: We refuse to back up (or write) a resolv.conf larger than this.
MAX_RESOLV_CONF = 64 * 1024
RESOLVECTL_TIMEOUT = 10.0


# ---- pure builders ------------------------------------------------------------------------


def resolv_conf_text(original: bytes, dns: DnsSettings, ifname: str) -> bytes:
    """The resolv.conf to write: the tunnel's servers and domains first.

    With ``default_route`` (redirect-gateway) only the tunnel's servers remain: a query
    to the old ones would leave outside the tunnel. Otherwise the old servers follow as
    fallbacks (up to glibc's three). ``options`` lines of the original are kept.
    """
    old_servers: list[str] = []
    old_search: list[str] = []
    options: list[str] = []
    for raw in original.decode("utf-8", "replace").splitlines():
        words = raw.split()
        if not words or words[0].startswith(("#", ";")):
            continue
        if words[0] == "nameserver" and len(words) > 1:
            old_servers.append(words[1])
        elif words[0] in ("search", "domain"):
            old_search = words[1:]
        elif words[0] == "options":
            options.append(" ".join(words))
    servers = list(dict.fromkeys(dns.servers))
    if not dns.default_route:
        servers += [s for s in old_servers if s not in servers]
    search = list(dict.fromkeys([*dns.domains, *old_search]))[:MAX_SEARCH]
    lines = [f"# written by trivpn for {ifname}; the previous file comes back when trivpn exits"]
    if search:
        lines.append("search " + " ".join(search))
    lines += [f"nameserver {s}" for s in servers[:MAX_NAMESERVERS]]
    lines += options
    return ("\n".join(lines) + "\n").encode()


def resolvectl_commands(ifname: str, dns: DnsSettings) -> list[list[str]]:
    """The ``resolvectl`` calls that give link ``ifname`` the tunnel's DNS.

    The domains are search and routing domains (split DNS), the ``resolve-domains`` ones
    routing domains only (``~corp.example``: looked up there, not appended to short names);
    ``~.`` plus the default route send every other name there too when the tunnel carries
    all traffic, also without domains: the default route alone still lets resolved ask the
    other links' servers as well, outside the tunnel. The domain list is always set (so
    never empty), which also replaces an earlier session's domains on a reconnect.
    """
    domains = list(dns.domains)
    domains += [f"~{d}" for d in dns.routing_domains if d not in dns.domains]
    if dns.default_route:
        domains.append("~.")
    commands = [["resolvectl", "dns", ifname, *dns.servers]]
    commands.append(["resolvectl", "domain", ifname, *(domains or [""])])
    commands.append(["resolvectl", "default-route", ifname, "yes" if dns.default_route else "no"])
    return commands


def resolved_active(resolv_conf: Path = RESOLV_CONF, run_dir: Path = RESOLVED_DIR) -> bool:
    """Is systemd-resolved running and does /etc/resolv.conf hand lookups to it?

    Both must hold: settings given to resolved change nothing for programs that read a
    resolv.conf naming other servers (an ``ip netns exec`` namespace has its own file).
    """
    if shutil.which("resolvectl") is None:
        return False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(str(run_dir / "io.systemd.Resolve"))
    except OSError:
        return False
    finally:
        sock.close()
    try:
        if Path(os.path.realpath(resolv_conf)).is_relative_to(run_dir):
            return True
        text = resolv_conf.read_bytes()[:MAX_RESOLV_CONF].decode("utf-8", "replace")
    except OSError:
        return False
    return any(ln.split()[:2] == ["nameserver", RESOLVED_STUB] for ln in text.splitlines())


# ---- systemd-resolved ---------------------------------------------------------------------


class Resolved:
    """Per-link DNS through ``resolvectl``."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.applied = False

    def apply(self, dns: DnsSettings) -> None:
        for argv in resolvectl_commands(self.ifname, dns):
            _run(argv)
        self.applied = True
        log.info("DNS for %s set in systemd-resolved: %s", self.ifname, " ".join(dns.servers))

    def undo(self) -> None:
        if self.applied:
            self.applied = False
            _run(["resolvectl", "revert", self.ifname], quiet=True)


def _run(argv: Sequence[str], *, quiet: bool = False) -> None:
    try:
        r = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=RESOLVECTL_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        if not quiet:
            log.warning("%s failed: %s", " ".join(argv[:2]), exc)
        return
    if r.returncode != 0 and not quiet:
        log.warning("%s failed: %s", " ".join(argv[:2]), (r.stderr or r.stdout).strip()[:200])


# ---- /etc/resolv.conf with a backup -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Backup:
    path: str
    dev: int
    ino: int
    pid: int
    original: bytes
    written: tuple[str, ...]  # sha256 of each text we wrote (a restore needs one of them)

    def to_json(self) -> str:
        import json  # here, not at the top: most runs never write a backup (start-up time)

        return json.dumps(
            {
                "path": self.path,
                "dev": self.dev,
                "ino": self.ino,
                "pid": self.pid,
                "original": base64.b64encode(self.original).decode(),
                "written": list(self.written),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> _Backup:
        import json

        d = json.loads(text)
        return cls(
            str(d["path"]), int(d["dev"]), int(d["ino"]), int(d["pid"]),
            base64.b64decode(d["original"]), tuple(str(h) for h in d["written"]),
        )


def _sha(data: bytes) -> str:
    return digests.digest("sha256", data).hex()


def _trivpn_alive(pid: int) -> bool:
    """Is `pid` a running trivpn (not a dead run whose pid was reused)?"""
    if pid == os.getpid():
        return False
    try:
        return b"trivpn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class ResolvConf:
    """Rewrites a resolv.conf in place, backed up first, restored on undo or next start."""

    def __init__(self, ifname: str, path: Path = RESOLV_CONF, state_dir: Path = STATE_DIR) -> None:
        self.ifname = ifname
        self.path = path
        self.state_dir = state_dir
        self._backup: _Backup | None = None

    def _backup_file(self, st: os.stat_result) -> Path:
        return self.state_dir / f"resolv-{st.st_dev}-{st.st_ino}.json"

    def recover(self) -> bool:
        """Restore what a crashed run left; False if a live trivpn owns the file."""
        try:
            st = os.stat(self.path)
            stored = self._backup_file(st).read_text()
        except FileNotFoundError:
            return True
        except OSError as exc:
            log.warning("cannot check %s for a DNS backup: %s", self.path, exc)
            return True
        try:
            backup = _Backup.from_json(stored)
        except (ValueError, KeyError, TypeError):
            log.warning("dropping an unreadable DNS backup for %s", self.path)
            self._backup_file(st).unlink(missing_ok=True)
            return True
        if _trivpn_alive(backup.pid):
            return False
        log.warning("restoring %s, left changed by an earlier trivpn run (pid %d)", self.path, backup.pid)
        self._restore(backup, st)
        return True

    def apply(self, dns: DnsSettings) -> None:
        if self._backup is not None:
            self._write(resolv_conf_text(self._backup.original, dns, self.ifname), self._backup)
            return
        st = os.stat(self.path)
        with open(self.path, "rb") as f:
            original = f.read(MAX_RESOLV_CONF + 1)
        if len(original) > MAX_RESOLV_CONF:
            raise OSError(f"{self.path} is larger than {MAX_RESOLV_CONF} bytes")
        text = resolv_conf_text(original, dns, self.ifname)
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write(text, _Backup(str(self.path), st.st_dev, st.st_ino, os.getpid(), original, ()))
        log.info("DNS for %s written to %s: %s", self.ifname, self.path, " ".join(dns.servers))

    def _write(self, data: bytes, backup: _Backup) -> None:
        """Record the backup (with the new text's hash) first, then write in place: a
        bind-mounted file cannot be replaced by a rename."""
        backup = _Backup(
            backup.path, backup.dev, backup.ino, backup.pid, backup.original,
            (*backup.written, _sha(data)),
        )
        target = self.state_dir / f"resolv-{backup.dev}-{backup.ino}.json"
        tmp = target.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(backup.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        self._backup = backup
        with open(self.path, "r+b") as f:
            f.truncate(0)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def undo(self) -> None:
        backup, self._backup = self._backup, None
        if backup is None:
            return
        try:
            st = os.stat(self.path)
        except OSError as exc:
            log.warning("cannot restore %s: %s", self.path, exc)
            return
        self._restore(backup, st)

    def _restore(self, backup: _Backup, st: os.stat_result) -> None:
        try:
            with open(self.path, "r+b") as f:
                current = f.read(MAX_RESOLV_CONF + 1)
                if _sha(current) not in backup.written:
                    log.warning("%s was changed by someone else; leaving it as it is", self.path)
                else:
                    f.seek(0)
                    f.truncate(0)
                    f.write(backup.original)
                    f.flush()
                    os.fsync(f.fileno())
                    log.info("restored %s", self.path)
        except OSError as exc:
            log.warning("cannot restore %s: %s", self.path, exc)
            return
        with contextlib.suppress(OSError):
            self._backup_file(st).unlink()


# ---- the run-long owner -------------------------------------------------------------------


class DnsConfigurator:
    """Applies the tunnel's DNS for a run (again when it changes), undone on every exit."""

    def __init__(
        self,
        ifname: str,
        *,
        resolv_conf: Path = RESOLV_CONF,
        state_dir: Path = STATE_DIR,
        use_resolved: bool | None = None,
    ) -> None:
        self.ifname = ifname
        self._file = ResolvConf(ifname, resolv_conf, state_dir)
        self._use_resolved = use_resolved
        self._backend: Resolved | ResolvConf | None = None
        self._owned_elsewhere = False
        self.applied: DnsSettings | None = None

    def recover(self) -> None:
        """At start: restore a resolv.conf a crashed run left behind."""
        self._owned_elsewhere = not self._file.recover()
        if self._owned_elsewhere:
            log.warning("another running trivpn manages %s; leaving DNS alone", self._file.path)

    def apply(self, dns: DnsSettings | None) -> None:
        if dns == self.applied or self._owned_elsewhere:
            return
        if dns is None:
            self.undo()
            return
        if self._backend is None:
            resolved = self._use_resolved
            if resolved is None:
                resolved = resolved_active(self._file.path)
            self._backend = Resolved(self.ifname) if resolved else self._file
        try:
            self._backend.apply(dns)
        except OSError as exc:
            log.warning("cannot set DNS for %s: %s", self.ifname, exc)
            return
        self.applied = dns

    def undo(self) -> None:
        """Never raises: it runs in cleanup."""
        self.applied = None
        if self._backend is not None:
            try:
                self._backend.undo()
            except Exception as exc:  # cleanup must go on
                log.warning("restoring DNS failed: %s", exc)
