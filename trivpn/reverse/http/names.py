"""Subdomain names and their leases on the relay (pure; no I/O, `now` passed in).

A name is one DNS label under the relay's `--domain`. Each is held by at most one client
(token name + the client id it keeps for life), exactly like a public port: while the
client's session lives the name routes to it; when the session ends the name stays
*leased* to that client for `lease` seconds, so a reconnect gets it back and nobody else
can grab it meanwhile. The same client asking while its old session still holds the name
is a takeover: the caller ends the old session first.
"""

from __future__ import annotations

from dataclasses import field

from trivpn.records import dataclass

Owner = tuple[str, bytes]

#: Route bits a client asks for in its BIND (one byte on the wire).
ROUTE_HTTP = 0x01  # plain HTTP, routed by the Host header
ROUTE_TLS = 0x02  # TLS passthrough, routed by the ClientHello's server_name
ROUTES_ALL = ROUTE_HTTP | ROUTE_TLS
MAX_LABEL = 63
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class NameUnavailable(Exception):
    """The name cannot be given (the message says why, for BIND_ERR)."""


def check_label(name: str) -> str:
    """One lower-case DNS label (a-z, 0-9, '-', not at either end), or NameUnavailable."""
    if not 1 <= len(name) <= MAX_LABEL:
        raise NameUnavailable(f"a subdomain must be 1..{MAX_LABEL} characters")
    if not set(name) <= _LABEL_CHARS or name[0] == "-" or name[-1] == "-":
        raise NameUnavailable(
            f"bad subdomain {name[:MAX_LABEL]!r}: use a-z, 0-9 and '-' (not first or last)"
        )
    return name


@dataclass(slots=True)
class _Lease:
    owner: Owner
    expires: float | None  # None while a session holds the name


@dataclass(slots=True)
class NameLeases:
    lease: float = 60.0
    _names: dict[str, _Lease] = field(default_factory=dict)

    def _expire(self, now: float) -> None:
        gone = [n for n, le in self._names.items() if le.expires is not None and le.expires <= now]
        for n in gone:
            del self._names[n]

    def __len__(self) -> int:
        return len(self._names)

    def assign(self, owner: Owner, name: str, now: float) -> bool:
        """Give `name` to `owner`; True means its previous session still holds it (takeover)."""
        check_label(name)
        self._expire(now)
        le = self._names.get(name)
        if le is not None and le.owner != owner:
            raise NameUnavailable(f"subdomain {name!r} is in use or leased to another client")
        # a client holds one name: asking for another gives up the one it had
        for other in [n for n, o in self._names.items() if o.owner == owner and n != name]:
            del self._names[other]
        if le is None:
            self._names[name] = _Lease(owner, None)
            return False
        takeover = le.expires is None
        le.expires = None
        return takeover

    def release(self, name: str, owner: Owner, now: float) -> None:
        """The holder's session ended: keep the name for it until the lease runs out."""
        le = self._names.get(name)
        if le is not None and le.owner == owner and le.expires is None:
            le.expires = now + self.lease

    def forget(self, name: str) -> None:
        self._names.pop(name, None)

    def leased(self, name: str, now: float) -> bool:
        """Held or leased (a client is reconnecting): worth a 503, not a 404."""
        self._expire(now)
        return name in self._names
