"""The PKI directory: which file holds what, written privately and atomically.

Layout of DIR (mode 0700, every file 0600):

    ca.crt ca.key              the CA (its key is only ever read from here)
    server.crt server.key      the server's certificate
    tls-crypt.key              or tls-crypt-v2-server.key
    crl.pem                    the revocation list server.conf points at
    server.conf                a ready OpenVPN 2.6 / trivpn serve configuration
    settings.json              what `init` was told (name, port, proto, subnet, key mode)
    index.txt                  one line per certificate issued: status, serial, dates, name
    clients/NAME.ovpn          each client's inline profile (its key lives only there)
    .lock                      held (flock) by the one `trivpn pki` command at work in DIR

Every write goes to a private temporary file in DIR first and is then renamed over the
target, so a crash never leaves a half-written CRL or index behind. Every read-modify-write
(init, issuing, revoking) holds DIR's lock, so concurrent commands never lose each other's
certificates or revocations.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from trivpn.errors import ConfigError
from trivpn.hostnames import host_name_problem
from trivpn.records import dataclass

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
TLS_CRYPT_KEY, V2_SERVER_KEY = "tls-crypt.key", "tls-crypt-v2-server.key"
CRL, SERVER_CONF, SETTINGS, INDEX = "crl.pem", "server.conf", "settings.json", "index.txt"
CLIENTS, LOCK = "clients", ".lock"
#: How long a command waits for another `trivpn pki` working in the same DIR, then gives up.
LOCK_WAIT_SECONDS = 30.0
_LOCK_POLL_SECONDS = 0.05
_INDEX_HEADER = "# status serial-hex issued expires revoked kind name  (written by trivpn pki)\n"
#: A name that is safe as a file name, a certificate CN and an OpenVPN config word.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9.:_-]{1,253}")


def check_name(name: str, what: str = "client name") -> str:
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{what} {name[:70]!r}: use 1-64 letters, digits, '.', '_' or '-' (not first)"
        )
    return name


def check_host(host: str, what: str) -> str:
    """`host` if a client profile's `remote` may name it, else a ConfigError.

    Why: the rules are the profile parser's (trivpn.hostnames) plus well-formed IP literals,
    checked before anything is written: a profile the client refuses, or whose remote can
    never be reached, would still use up the client's name until it is revoked.
    """
    if not _HOST.fullmatch(host) or host.startswith("-"):
        raise ConfigError(f"{what} {host[:70]!r}: not a host name or address (letters, digits, '.', '-', '_', ':')")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{what} {host!r}: not a host name or address (not a valid IPv6 address)") from None
        return host
    if (problem := host_name_problem(host)) is not None:
        raise ConfigError(f"{what} {host!r}: not a host name or address ({problem})")
    if host.rsplit(".", 1)[-1].isdigit():  # no top-level domain is all digits: an IPv4 literal
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"{what} {host!r}: not a host name or address (not a valid IPv4 address)") from None
    return host


def _plausible_host(host: str) -> str:
    """The loose check for settings.json (a damaged file); `check_host` is the strict one."""
    if not _HOST.fullmatch(host):
        raise ValueError(host)
    return host


@dataclass(frozen=True, slots=True)
class Settings:
    """What `trivpn pki init` was asked for; `client` reuses it for the profiles."""

    name: str
    port: int
    proto: str
    subnet: str
    tls_crypt_v2: bool
    curve: str


@dataclass(slots=True)
class Entry:
    """One line of index.txt."""

    status: str  # "V" valid, "R" revoked
    serial: int
    issued: str
    expires: str
    revoked: str  # "-" while valid
    kind: str  # "server" or "client"
    name: str

    def line(self) -> str:
        fields = (self.status, f"{self.serial:x}", self.issued, self.expires, self.revoked, self.kind, self.name)
        return "\t".join(fields) + "\n"


def stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


class Store:
    """One PKI directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # ---- creation and private writes ------------------------------------------------------

    def create(self) -> None:
        """Make DIR (0700); refuse a directory that is already in use. Call `claim` next,
        under the lock: another init may be filling the same DIR."""
        if self.root.exists():
            if not self.root.is_dir():
                raise ConfigError(f"{self.root} exists and is not a directory")
            self._check_empty()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.root, 0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create {self.root}: {exc.strerror}") from None

    def claim(self) -> None:
        """Under the lock: check again that DIR is empty, then make DIR/clients."""
        self._check_empty()
        (self.root / CLIENTS).mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.root / CLIENTS, 0o700)

    def _check_empty(self) -> None:
        if any(p.name != LOCK for p in self.root.iterdir()):
            raise ConfigError(f"{self.root} is not empty; refusing to overwrite an existing PKI")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold DIR's exclusive lock (flock on DIR/.lock), waiting up to LOCK_WAIT_SECONDS.

        Why: two commands that each read index.txt, add a line and write it back would
        otherwise keep only one of the two lines (a profile nobody could revoke, or a
        revocation missing from the CRL). The lock goes with the process: a command that
        dies never leaves DIR locked.
        """
        path = self.root / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise ConfigError(f"{self.root} is missing: is it a PKI made by 'trivpn pki init'?") from None
        except OSError as exc:
            raise ConfigError(f"cannot open the lock file {path}: {exc.strerror}") from None
        try:
            self._lock(fd, path)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _lock(self, fd: int, path: Path) -> None:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        for _ in range(int(LOCK_WAIT_SECONDS / _LOCK_POLL_SECONDS) + 2):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(_LOCK_POLL_SECONDS)
            except OSError as exc:
                raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
        raise ConfigError(
            f"{self.root} is busy: another 'trivpn pki' command still holds {path} after "
            f"{LOCK_WAIT_SECONDS:g} s; try again when it has finished"
        )

    def write(self, relative: str, text: str, *, new: bool = False) -> Path:
        """Write `text` to DIR/relative with mode 0600 (atomically; `new`: must not exist).

        The CRL alone is 0644: it is public, and a server that drops its privileges
        (`user nobody`) must read it again after every `revoke` — written 0600, the running
        server kept its old CRL and let the revoked client in."""
        target = self.root / relative
        if new and target.exists():
            raise ConfigError(f"{target} already exists; refusing to overwrite it")
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", text=True)
        try:
            os.fchmod(fd, 0o644 if relative == CRL else 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return target

    def read(self, relative: str) -> str:
        path = self.root / relative
        try:
            return path.read_text(encoding="ascii")
        except (FileNotFoundError, NotADirectoryError):
            raise ConfigError(f"{path} is missing: is {self.root} a PKI made by 'trivpn pki init'?") from None
        except (UnicodeDecodeError, ValueError):
            raise ConfigError(f"{path} is not a text file trivpn pki wrote") from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None

    # ---- settings and index ---------------------------------------------------------------

    def save_settings(self, settings: Settings) -> None:
        self.write(SETTINGS, json.dumps(asdict(settings), indent=2) + "\n")

    def settings(self) -> Settings:
        text = self.read(SETTINGS)
        try:
            raw = json.loads(text)
            return Settings(
                name=_plausible_host(str(raw["name"])),
                port=int(raw["port"]),
                proto=str(raw["proto"]),
                subnet=str(raw["subnet"]),
                tls_crypt_v2=bool(raw["tls_crypt_v2"]),
                curve=str(raw["curve"]),
            )
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{self.root / SETTINGS} is damaged") from None

    def entries(self) -> list[Entry]:
        out: list[Entry] = []
        for number, line in enumerate(self.read(INDEX).splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            try:
                if len(fields) != 7 or fields[0] not in ("V", "R"):
                    raise ValueError
                entry = Entry(fields[0], int(fields[1], 16), *fields[2:])
            except ValueError:
                raise ConfigError(f"{self.root / INDEX} line {number} is damaged") from None
            out.append(entry)
        return out

    def save_entries(self, entries: list[Entry]) -> None:
        self.write(INDEX, _INDEX_HEADER + "".join(e.line() for e in entries))
