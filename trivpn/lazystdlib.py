"""Defer the standard-library modules trio imports for features the command line never uses.

Why: `import trio` imports `ssl` (for `trio.SSLStream`) and `hmac` (for trio's DTLS), and
`cryptography.x509` imports `hashlib` (for one helper that computes a key identifier).
Each loads and initialises the system's OpenSSL (libssl, libcrypto) although trivpn's TLS,
AEAD and HMACs run on the OpenSSL inside `cryptography` (`trivpn.digests`). Measured with
the README's interpreter, together with `bz2`/`lzma`: 5.3 MB of `trivpn connect`'s peak RSS
(43.2 → 37.9 MB, `bench startup --base`) and ≈ 4 ms of imports (docs/performance.md,
"Start-up and RSS"). `email.utils`, which `cryptography.x509` imports for one function,
is deferred the same way (≈ 2–3 ms and 0.25 MB).

`defer()` puts a stand-in module under each name in `sys.modules`. The first attribute
anyone reads from a stand-in imports the real module and copies its namespace into the
stand-in, so code that does use `ssl` or `hmac` (the management interface, a server, a
user's script) works unchanged, one import later; a function that a module took with
`from M import f` while M was a stand-in (`FORWARDED`) imports M at its first call. Only the command line calls `defer()`,
before it imports trio; `import trivpn` as a library changes nothing. A name already
imported is left alone. A run that drops privileges (`user`/`group`) calls `resolve()`
before the drop, like its other lazy imports (trivpn/session/privdrop.py).

`known_libraries()` answers the one library lookup trio makes at import: it looks up
`pthread` with `ctypes.util.find_library` (to name its worker threads), which on Linux runs
`/sbin/ldconfig -p` in a child process to find a name that glibc fixes (`libpthread.so.0`),
≈ 2.5 ms of every start. The command line calls it next to `defer()`; other names, and
other C libraries than glibc, still go to `find_library`.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

__all__ = ["DEFERRED", "GLIBC_SONAMES", "defer", "is_deferred", "known_libraries", "resolve"]

#: What trio (`ssl`, `hmac`), `cryptography.x509` (`hashlib`, for one helper) and `shutil`
#: (`bz2`, `lzma`, for its archive formats: +0.5 MB) import at start-up for features the
#: command line does not use.
DEFERRED = ("ssl", "hmac", "hashlib", "bz2", "lzma", "email.utils")
#: Functions that a module imported at start-up takes from a deferred one with `from M import
#: f` while it is itself being imported: the stand-in carries a forwarder under that name, so
#: the real module is imported at the first *call* instead. `cryptography.x509` takes
#: `parseaddr` for e-mail names in certificates; `email.utils` brings the `email` package's
#: charset, MIME-encoding and date modules (≈ 5 ms of `trivpn connect`'s start).
FORWARDED = {"email.utils": ("parseaddr",)}


class _StandIn(types.ModuleType):
    """A module that becomes the real one at its first attribute lookup."""

    def __getattr__(self, name: str) -> object:  # only for names not in the namespace yet
        if name.startswith("__") and name.endswith("__") and name != "__all__":
            # probes that walk sys.modules (__file__, __path__, __wrapped__...) load nothing
            raise AttributeError(name)
        return getattr(_load(self), name)


#: one load at a time: without it, a thread that saw the stand-in could remove the real
#: module another thread had just imported and load a second copy (reentrant: a real
#: module's import may touch another stand-in)
_loading = threading.RLock()


def _load(stand_in: _StandIn) -> types.ModuleType:
    name = stand_in.__name__
    with _loading:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        real = importlib.import_module(name)
        stand_in.__dict__.update(real.__dict__)
    return real


def _forwarder(stand_in: _StandIn, attr: str) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return getattr(_load(stand_in), attr)(*args, **kwargs)

    forward.__name__ = forward.__qualname__ = attr
    return forward


def _exists(name: str) -> types.ModuleType | None:
    """The parent package of `name` (`sys` for a top-level module) if this Python has
    `name`, else None; only the parent is imported to find out."""
    parent_name, _, _ = name.rpartition(".")
    parent = importlib.import_module(parent_name) if parent_name else sys
    path = getattr(parent, "__path__", None) if parent_name else None
    found = importlib.machinery.PathFinder.find_spec(name, path) is not None
    return parent if found else None


def defer(names: tuple[str, ...] = DEFERRED) -> None:
    """Put a stand-in for each of `names` that nobody has imported yet and that this Python
    has (a build without `lzma` keeps its ImportError where `shutil` expects it)."""
    for name in names:
        if name in sys.modules or (parent := _exists(name)) is None:
            continue
        stand_in = _StandIn(name)
        for attr in FORWARDED.get(name, ()):
            setattr(stand_in, attr, _forwarder(stand_in, attr))
        sys.modules[name] = stand_in
        if parent is not sys:  # `import email.utils` then reads it from the package
            setattr(parent, name.rpartition(".")[2], stand_in)


def resolve() -> None:
    """Import the real module behind every stand-in now (before a privilege drop: the user
    may not be able to read the Python installation later)."""
    for name in DEFERRED:
        stand_in = sys.modules.get(name)
        if isinstance(stand_in, _StandIn):
            _load(stand_in)


def is_deferred(name: str) -> bool:
    """Is `name` still a stand-in (nothing has used it)?"""
    return isinstance(sys.modules.get(name), _StandIn)


#: Names `ctypes.util.find_library` resolves to on every glibc: `libpthread.so.0` is the
#: thread library before glibc 2.34 and a compatibility stub for it (its symbols resolve in
#: libc) since.
GLIBC_SONAMES = {"pthread": "libpthread.so.0"}


def known_libraries() -> bool:
    """Answer `find_library` for `GLIBC_SONAMES` without a child process, on glibc only
    (False elsewhere: the lookup stays as it was)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (ValueError, OSError):  # not glibc (musl has no such name)
        return False
    import ctypes.util

    lookup = ctypes.util.find_library
    if getattr(lookup, "_trivpn_known", False):
        return True

    def find_library(name: str) -> str | None:
        known = GLIBC_SONAMES.get(name)
        return known if known is not None else lookup(name)

    find_library._trivpn_known = True  # type: ignore[attr-defined]
    ctypes.util.find_library = find_library
    return True
