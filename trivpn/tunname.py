"""Which TUN interface `trivpn connect` asks the kernel for, from the profile's `dev`.

OpenVPN takes `dev tun` to mean "the next free tunN" and any other name as that very
interface. trivpn keeps its own pattern for plain `dev tun` (`tvpn0`, `tvpn1`, ...: never
mistaken for an OpenVPN's tunN running beside it) and honours a specific name, which
before was ignored for `tvpn%d`.

Pure: the caller passes `Profile.dev_name` and creates the device.
"""

from __future__ import annotations

from trivpn.errors import ConfigError

__all__ = ["DEFAULT_TUN_NAME", "IFNAMSIZ", "tun_name_for"]

#: What plain `dev tun` becomes; `%d`: the kernel picks the first free number.
DEFAULT_TUN_NAME = "tvpn%d"
#: Linux's interface name buffer, the terminating NUL included.
IFNAMSIZ = 16


def tun_name_for(dev: str | None) -> str:
    """The name to create: trivpn's pattern for `dev tun` (or none), else `dev` itself once
    it is checked to be a name the kernel accepts (one line otherwise, not an ioctl error)."""
    if dev is None or dev == "tun":
        return DEFAULT_TUN_NAME
    why = _bad_name(dev)
    if why is not None:
        raise ConfigError(f"dev {dev!r} is not a usable interface name: {why}")
    return dev


def _bad_name(name: str) -> str | None:
    """Why Linux would refuse `name` as an interface name (dev_valid_name, dev_alloc_name)."""
    if not name.isascii() or not name.isprintable():
        return "only printable ASCII characters"
    if len(name) >= IFNAMSIZ:
        return f"at most {IFNAMSIZ - 1} characters"
    if name in (".", ".."):
        return "not '.' or '..'"
    for ch in "/: \t":
        if ch in name:
            return f"no {ch!r}"
    if "%" in name and (name.count("%") > 1 or "%d" not in name):
        return "'%' only as one '%d' (the first free number)"
    return None
