"""`user` / `group`: `trivpn serve` gives up root once its TUN and listeners are up.

Theory of operation
-------------------
Everything that needs root happens before the drop: the TUN is opened and configured, the
listening sockets are bound, the status and ifconfig-pool-persist files are opened. Then
`drop()` sets the supplementary groups to the one group, the gid, and the uid, in that
order (a process that changed its uid first could no longer change its groups).

One privilege is kept on purpose: CAP_NET_ADMIN, only that, in the permitted and effective
sets (PR_SET_KEEPCAPS across setuid, then capset). The exit cleanups remove the server's
addresses and routes through rtnetlink, which needs it; without it a stopped server would
leave its routes behind (OpenVPN without persist-tun fails the same way after `user`).
Nothing else is kept: no file access beyond the new user's, no raw sockets, no setuid.
Scripts the server starts get no capability at all (execve of a non-root program clears
them), and run as the new user, as OpenVPN's do.

Files written later keep working because they are opened now and rewritten in place
through that descriptor (seek, write, truncate), as OpenVPN does, instead of the atomic
temp-file-and-rename used without a drop (which needs a writable directory).

Files read later (the crl-verify file at each new client, client-config-dir, tmp-dir,
scripts) are read as the new user, so `access_problem` checks at start, from the mode bits
of every path component, that the new uid and gid (no other group, no capability) will
reach them: a CRL the server can no longer read would refuse every new client (crlfile.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import logging
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

from trivpn.errors import ConfigError, FatalError
from trivpn.records import dataclass

__all__ = ["KeptFile", "PrivilegeDrop", "access_problem", "dropped_ids"]

log = logging.getLogger("trivpn.server")

_PR_SET_KEEPCAPS = 8
_CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

Writer = Callable[[Path, str, int], None]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise FatalError(f"cannot drop privileges: {what} failed: {os.strerror(err)}")


class KeptFile:
    """A file opened before the drop and rewritten in place later (not atomically)."""

    def __init__(self, path: str | Path, mode: int) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
        except OSError as exc:
            raise ConfigError(f"cannot open {path}: {exc.strerror or exc}") from None
        self.path = str(path)

    def write(self, _path: Path, text: str, _mode: int = 0) -> None:
        """Replace the content (the `write_status_file` signature; path and mode are fixed)."""
        data = text.encode("utf-8")
        os.lseek(self.fd, 0, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        os.ftruncate(self.fd, len(data))

    def replace(self, _path: str, text: str) -> None:
        """The same, with the pool-persist writer's signature."""
        self.write(Path(self.path), text)

    def close(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class _Identity:
    uid: int | None
    gid: int
    name: str


def _resolve(user: str | None, group: str | None) -> _Identity | None:
    if user is None and group is None:
        return None
    uid = None
    gid: int | None = None
    if user is not None:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"option 'user': no such user {user[:64]!r}") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"option 'group': no such group {group[:64]!r}") from None
    assert gid is not None
    return _Identity(uid, gid, f"{user or '-'}:{group or gid}")


def dropped_ids(user: str | None, group: str | None) -> tuple[int, int, str] | None:
    """(uid, gid, name) the server will run as after the drop; None without `user`/`group`,
    or when it stays root (a root process reads anything)."""
    ident = _resolve(user, group)
    if ident is None:
        return None
    uid = ident.uid if ident.uid is not None else os.getuid()
    return None if uid == 0 else (uid, ident.gid, ident.name)


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def _allows(st: os.stat_result, uid: int, gid: int, want: int) -> bool:
    """The kernel's mode-bit rule for a process with this uid and only this group: the
    owner bits for the owner (even if others may do more), else the group's, else others'."""
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid == gid:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want & 7 == want


def access_problem(path: str | Path, uid: int, gid: int, want: int, *, directory: bool = False) -> str | None:
    """Why uid/gid could not `want` (os.R_OK | W_OK | X_OK bits) on `path` after the drop:
    every directory above it must be searchable; None when nothing stands in the way.
    Stats as the caller (root); ACLs are not read, so a doubt refuses (fails closed)."""
    real = Path(os.path.realpath(path))
    for parent in reversed(real.parents):
        try:
            st = os.stat(parent)
        except OSError as exc:
            return f"{parent}: {exc.strerror or exc}"
        if not _allows(st, uid, gid, os.X_OK):
            return f"{parent} is mode {stat.S_IMODE(st.st_mode):04o} owned by {_owner(st)}"
    try:
        st = os.stat(real)
    except OSError as exc:
        return f"{real}: {exc.strerror or exc}"
    if directory and not stat.S_ISDIR(st.st_mode):
        return f"{real} is not a directory"
    if not _allows(st, uid, gid, want):
        return f"{real} is mode {stat.S_IMODE(st.st_mode):04o} owned by {_owner(st)}"
    return None


class PrivilegeDrop:
    """The configured drop (nothing when neither `user` nor `group` is set)."""

    def __init__(self, user: str | None, group: str | None) -> None:
        self.identity = _resolve(user, group)  # unknown names: ConfigError at once
        self.kept: list[KeptFile] = []
        #: the user this process became, once `drop` gave up root (a group alone keeps uid
        #: 0): from then on no new TUN, no low port, no second drop, so no restart (restart.py)
        self.root_given_up: str | None = None

    @property
    def active(self) -> bool:
        return self.identity is not None

    def keep(self, path: str | Path, mode: int) -> KeptFile | None:
        """Open `path` now if a drop will follow (the caller then writes through it)."""
        if self.identity is None:
            return None
        kept = KeptFile(path, mode)
        self.kept.append(kept)
        return kept

    def drop(self) -> None:
        """setgroups, setgid, setuid; keep CAP_NET_ADMIN (see the module docstring)."""
        ident = self.identity
        if ident is None:
            return
        libc = _libc()
        if ident.uid is not None and ident.uid != 0:
            _check(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
        try:
            os.setgroups([ident.gid])
            os.setgid(ident.gid)
            if ident.uid is not None:
                os.setuid(ident.uid)
        except OSError as exc:
            raise FatalError(f"cannot drop privileges to {ident.name}: {exc.strerror or exc}") from None
        if ident.uid is not None and ident.uid != 0:
            keep = 1 << _CAP_NET_ADMIN
            header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
            data = (_CapData * 2)(_CapData(keep, keep, 0), _CapData(0, 0, 0))
            _check(libc.capset(ctypes.byref(header), data), "capset(CAP_NET_ADMIN)")
            _check(libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS, 0)")
            self.root_given_up = ident.name
        log.info("privileges dropped to %s (uid %s, gid %d), CAP_NET_ADMIN kept for the exit cleanups",
                 ident.name, ident.uid if ident.uid is not None else os.getuid(), ident.gid)

    def close(self) -> None:
        for kept in self.kept:
            try:
                kept.close()
            except OSError:
                pass
        self.kept.clear()
