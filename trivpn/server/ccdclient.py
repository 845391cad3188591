"""What a `client-config-dir` file does to one client at connect time.

The key schedule asks for a client's pushes synchronously (its push callable), at the
moment the client's common name is first known, so the ccd file is read right there, in
the service-side callable: one regular file, bounded by MAX_REFERENCED_FILE_SIZE, read
once per connecting client (OpenVPN reads it at the same point of its single-threaded
loop). The cores stay pure: the key schedule only calls what the service injected, and
`parse_ccd` turns text into a `CcdEntry`. This module picks the file, refuses what must
be refused (NegotiationError → AUTH_FAILED) and builds the per-client push list.
"""

from __future__ import annotations

import logging
import os
from ipaddress import IPv4Network, IPv6Network

from trivpn.errors import ConfigError
from trivpn.server.ccd import CcdEntry, load_ccd
from trivpn.server.config_model import ServerConfig
from trivpn.server.pool_types import IfconfigIPv6Push, IfconfigPush, Lease
from trivpn.tlssession.negotiation import NegotiationError

__all__ = ["DEFAULT_FILE", "ccd_file_name", "client_pushes", "find_ccd", "unrouted_iroutes"]

log = logging.getLogger("trivpn.server")

#: The file used for a client without a file of its own.
DEFAULT_FILE = "DEFAULT"


def ccd_file_name(common_name: str) -> str | None:
    """`common_name` as a file name inside the ccd directory, or None when it is not a
    safe one (empty, `.`/`..`, a path separator, a control or non-printable character)."""
    if not common_name or common_name in (".", "..") or len(common_name) > 255:
        return None
    if "/" in common_name or "\\" in common_name or not common_name.isprintable():
        return None
    return common_name


def find_ccd(directory: str, common_name: str, exclusive: bool) -> CcdEntry | None:
    """The entry for `common_name` (its own file, else DEFAULT), None without any.

    Raises NegotiationError when the client must be refused: `ccd-exclusive` and no file of
    its own (or a name that cannot be one), a file that does not parse, or `disable`."""
    name = ccd_file_name(common_name)
    own = os.path.join(directory, name) if name is not None else None
    path: str | None = None
    if own is not None and os.path.isfile(own):
        path = own
    elif exclusive:
        raise NegotiationError(f"no client-config-dir file for {common_name[:64]!r} (ccd-exclusive)")
    elif os.path.isfile(default := os.path.join(directory, DEFAULT_FILE)):
        path = default
    if path is None:
        return None
    try:
        entry = load_ccd(path)
    except ConfigError as exc:
        raise NegotiationError(f"client-config-dir file rejected: {exc}") from None
    if entry.disable:
        raise NegotiationError("client is disabled (client-config-dir)")
    for warning in entry.warnings:
        log.warning("%s: %s", path, warning)
    return entry


def unrouted_iroutes(entry: CcdEntry, config: ServerConfig) -> list[str]:
    """The entry's iroutes no `route`/`route-ipv6` line (nor the server network) sends into
    the TUN: as in OpenVPN, iroute only feeds the internal router, so the kernel would never
    hand their packets to the server (worth a warning, not a refusal)."""
    v4 = [n for n in (*config.routes, config.network) if n is not None]
    v6 = [n for n in (*config.routes_ipv6, config.network_ipv6) if n is not None]
    out = [str(net) for net in entry.iroutes if not any(net.subnet_of(r) for r in v4)]
    return out + [str(net) for net in entry.iroutes_ipv6 if not any(net.subnet_of(r) for r in v6)]


def _removed(option: str, prefixes: tuple[str, ...]) -> bool:
    return any(option.startswith(p) for p in prefixes)


def _own_iroute(option: str, entry: CcdEntry) -> bool:
    """A `route`/`route-ipv6` push naming one of the client's own iroutes (the client
    must not route its own network into the tunnel)."""
    words = option.split()
    try:
        if words[0] == "route" and len(words) >= 2:
            mask = words[2] if len(words) >= 3 and words[2] != "default" else "255.255.255.255"
            return IPv4Network(f"{words[1]}/{mask}") in entry.iroutes
        if words[0] == "route-ipv6" and len(words) >= 2:
            return IPv6Network(words[1]) in entry.iroutes_ipv6
    except ValueError:
        return False
    return False


def client_pushes(global_push: tuple[str, ...] | list[str], entry: CcdEntry | None, lease: Lease) -> list[str]:
    """The server's pushes as the ccd entry changes them, then the lease's addresses.

    `push-reset` drops the whole inherited list; `push-remove p` drops inherited entries
    that start with `p`, and `ifconfig`/`ifconfig-ipv6` exactly name the address blocks;
    the entry's own `push` lines come after the inherited ones; a `route` naming one of
    the client's own iroutes is not pushed to it."""
    items: list[IfconfigIPv6Push | IfconfigPush] = lease.pushes()
    if entry is None:
        return [*global_push, *(item.option for item in items)]
    inherited = [] if entry.push_reset else [p for p in global_push if not _removed(p, entry.push_remove)]
    blocked = set(entry.push_remove)
    keep = [
        item for item in items
        if not (isinstance(item, IfconfigPush) and "ifconfig" in blocked)
        and not (isinstance(item, IfconfigIPv6Push) and "ifconfig-ipv6" in blocked)
    ]
    chosen = [p for p in (*inherited, *entry.push) if not _own_iroute(p, entry)]
    return [*chosen, *(item.option for item in keep)]
