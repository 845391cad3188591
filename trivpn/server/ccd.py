"""Per-client config files (``client-config-dir``): text into a :class:`CcdEntry`.

A ccd file uses the server config's syntax (same tokenizer) but only the options
OpenVPN allows for one client at connect time.  We implement ``ifconfig-push``,
``ifconfig-ipv6-push``, ``iroute``, ``iroute-ipv6``, ``push``, ``push-reset``,
``push-remove`` and ``disable``; anything else is skipped with a one-line warning
(the client still connects, as OpenVPN does with options it cannot apply).
Which file applies to which client (the common name, ``DEFAULT``) and what the
entries do to the pool, routing table and push list is the server's business.
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Interface, IPv6Network
from pathlib import Path

from trivpn.errors import ConfigError
from trivpn.profile.checks import MAX_REFERENCED_FILE_SIZE, Invalid, err, nargs, read_limited
from trivpn.profile.options import is_inline, iter_options
from trivpn.records import dataclass
from trivpn.server.config_draft import Draft
from trivpn.server.config_options import SERVER
from trivpn.server.pool_types import IfconfigIPv6Push, IfconfigPush

__all__ = ["CcdEntry", "load_ccd", "parse_ccd"]


@dataclass(frozen=True, slots=True)
class CcdEntry:
    """One client's settings from its ccd file.

    ``ifconfig_push`` is ``(address, netmask or peer address)`` as written: the second
    value is a netmask with topology subnet and the peer address with net30, so the pool
    gets it through :meth:`ipv4_push`.
    """

    ifconfig_push: tuple[IPv4Address, IPv4Address] | None = None
    ifconfig_ipv6_push: IfconfigIPv6Push | None = None
    iroutes: tuple[IPv4Network, ...] = ()
    iroutes_ipv6: tuple[IPv6Network, ...] = ()
    push: tuple[str, ...] = ()
    push_reset: bool = False
    push_remove: tuple[str, ...] = ()
    disable: bool = False
    warnings: tuple[str, ...] = ()

    def ipv4_push(self, topology: str) -> IfconfigPush | None:
        """The fixed IPv4 address for :meth:`AddressPool.reserve_fixed` under ``topology``."""
        if self.ifconfig_push is None:
            return None
        address, second = self.ifconfig_push
        return IfconfigPush(address, second, net30=topology == "net30")


class _Builder:
    def __init__(self) -> None:
        self.ifconfig_push: tuple[IPv4Address, IPv4Address] | None = None
        self.ifconfig_ipv6_push: IfconfigIPv6Push | None = None
        self.iroutes: list[IPv4Network] = []
        self.iroutes_ipv6: list[IPv6Network] = []
        self.push_remove: list[str] = []
        self.push_reset = False
        self.disable = False
        self.push = Draft(None)  # reuses the server's `push` checks


def _ipv4(value: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError:
        raise Invalid(f"{value[:60]!r} is not an IPv4 address") from None


def _ipv6(value: str) -> IPv6Address:
    try:
        return IPv6Address(value)
    except ValueError:
        raise Invalid(f"{value[:60]!r} is not an IPv6 address") from None


def _apply(b: _Builder, line: int, name: str, args: list[str]) -> bool:
    """Apply one implemented option; False if ``name`` is not one."""
    if name == "ifconfig-push":
        nargs(args, 2, 3)  # a third argument (an alias) is ignored, as in OpenVPN
        b.ifconfig_push = (_ipv4(args[0]), _ipv4(args[1]))
    elif name == "ifconfig-ipv6-push":
        nargs(args, 1, 2)
        if "/" not in args[0]:
            raise Invalid(f"{args[0][:60]!r} must be an IPv6 address with a /bits prefix length")
        try:
            iface = IPv6Interface(args[0])
        except ValueError:
            raise Invalid(f"{args[0][:60]!r} is not an IPv6 address/bits") from None
        peer = _ipv6(args[1]) if len(args) == 2 else None
        b.ifconfig_ipv6_push = IfconfigIPv6Push(iface.ip, iface.network.prefixlen, peer)
    elif name == "iroute":
        nargs(args, 1, 2)
        mask = args[1] if len(args) == 2 else "255.255.255.255"
        try:
            b.iroutes.append(IPv4Network(f"{_ipv4(args[0])}/{_ipv4(mask)}"))
        except ValueError:
            raise Invalid(f"{args[0]} {mask} is not a network address and netmask") from None
    elif name == "iroute-ipv6":
        nargs(args, 1, 1)
        try:
            b.iroutes_ipv6.append(IPv6Network(args[0]))
        except ValueError:
            raise Invalid(f"{args[0][:60]!r} is not an IPv6 network/bits") from None
    elif name == "push":
        SERVER["push"](b.push, line, args, False)
    elif name == "push-reset":
        nargs(args, 0, 0)
        b.push_reset = True
    elif name == "push-remove":
        nargs(args, 1, 1)
        b.push_remove.append(args[0])
    elif name == "disable":
        nargs(args, 0, 0)
        b.disable = True
    else:
        return False
    return True


def parse_ccd(text: str, *, source: str | None = None) -> CcdEntry:
    """Parse one ccd file's text; raises a one-line :class:`ConfigError`."""
    try:
        if len(text) > MAX_REFERENCED_FILE_SIZE:
            raise ConfigError(f"larger than {MAX_REFERENCED_FILE_SIZE} characters")
        b = _Builder()
        warnings: list[str] = []
        for line, tokens in iter_options(text):
            inline = is_inline(tokens)
            name = tokens[0][1:-1] if inline else tokens[0]
            try:
                if inline or not _apply(b, line, name, tokens[1:]):
                    warnings.append(
                        f"option '{name}' (line {line}) is not supported in a "
                        "client-config-dir file and was ignored"
                    )
            except Invalid as exc:
                raise err(line, name, str(exc)) from None
    except ConfigError as exc:
        if source:
            raise ConfigError(f"{source}: {exc}") from None
        raise
    return CcdEntry(
        ifconfig_push=b.ifconfig_push,
        ifconfig_ipv6_push=b.ifconfig_ipv6_push,
        iroutes=tuple(b.iroutes),
        iroutes_ipv6=tuple(b.iroutes_ipv6),
        push=tuple(b.push.push),
        push_reset=b.push_reset,
        push_remove=tuple(b.push_remove),
        disable=b.disable,
        warnings=tuple(warnings),
    )


def load_ccd(path: str | os.PathLike[str]) -> CcdEntry:
    """Read (bounded) and parse the ccd file at ``path``."""
    p = Path(path)
    try:
        data = read_limited(p)
    except OSError as exc:
        raise ConfigError(f"cannot read ccd file '{p}': {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(f"invalid ccd file name {str(p)[:80]!r}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"ccd file '{p}' is not valid UTF-8 text") from None
    return parse_ccd(text, source=str(p))
