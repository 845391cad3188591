"""Subdomain names and their leases on the relay (pure; no I/O, `now` passed in).

A name is one DNS label under the relay's `--domain`. Each is held by at most one client
(token name + the client id it keeps for life), exactly like a public port: while the
client's session lives the name routes to it; when the session ends the name stays
*leased* to that client for `lease` seconds, so a reconnect gets it back and nobody else
can grab it meanwhile. The same client asking while its old session still holds the name
is a takeover: the caller ends the old session first.

Quota: like ports, the names held under one token name (in use or leased, by all its
client ids) never exceed `quota` (the relay's `--name-quota`, default 4). A new name beyond it first
gives up that token name's oldest lease; if all its names are in use the bind is refused,
so one token (leaked, or a loop of throw-away client ids) holds a few names, not one per
session. Every operation costs O(log n) in the names held plus O(quota): indexes by client
and by token name, and a heap of lease expiries, instead of scans over every name.
"""

from __future__ import annotations

import heapq
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


DEFAULT_NAME_QUOTA = 4  # names (in use or leased) per token name (`--name-quota`)
MAX_NAME_QUOTA = 1024  # its bound: a few names per client, not a table per token


@dataclass(slots=True)
class _Lease:
    owner: Owner
    expires: float | None  # None while a session holds the name


@dataclass(slots=True)
class NameLeases:
    lease: float = 60.0
    quota: int = DEFAULT_NAME_QUOTA
    _names: dict[str, _Lease] = field(default_factory=dict)
    _of_owner: dict[Owner, str] = field(default_factory=dict)  # a client holds one name
    _of_token: dict[str, set[str]] = field(default_factory=dict)  # token name -> its names
    _expiries: list[tuple[float, str]] = field(default_factory=list)  # a heap, lazily pruned

    def _expire(self, now: float) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now:  # bounded: each entry is popped once
            when, name = heapq.heappop(heap)
            le = self._names.get(name)
            if le is not None and le.expires is not None and le.expires <= now:
                self._drop(name)

    def _drop(self, name: str) -> None:
        le = self._names.pop(name)
        if self._of_owner.get(le.owner) == name:
            del self._of_owner[le.owner]
        mine = self._of_token[le.owner[0]]
        mine.discard(name)
        if not mine:
            del self._of_token[le.owner[0]]

    def __len__(self) -> int:
        return len(self._names)

    def held(self, token_name: str, now: float) -> int:
        """Names in use by or leased to clients of this token name."""
        self._expire(now)
        return len(self._of_token.get(token_name, ()))

    def assign(self, owner: Owner, name: str, now: float) -> bool:
        """Give `name` to `owner`; True means its previous session still holds it (takeover)."""
        check_label(name)
        self._expire(now)
        le = self._names.get(name)
        if le is not None and le.owner != owner:
            raise NameUnavailable(f"subdomain {name!r} is in use or leased to another client")
        # a client holds one name: asking for another gives up the one it had
        other = self._of_owner.get(owner)
        if other == name:
            other = None
        if le is None:
            self._make_room(owner[0], other)
        if other is not None:
            self._drop(other)
        if le is None:
            self._names[name] = _Lease(owner, None)
            self._of_owner[owner] = name
            self._of_token.setdefault(owner[0], set()).add(name)
            return False
        takeover = le.expires is None
        le.expires = None
        return takeover

    def _make_room(self, token_name: str, replacing: str | None) -> None:
        """Room for one more name of `token_name` (`replacing` goes anyway): give up its
        oldest leases, or refuse when its names in use alone fill the quota."""
        mine = [n for n in self._of_token.get(token_name, ()) if n != replacing]
        if len(mine) < self.quota:
            return
        idle = sorted((le.expires, n) for n in mine if (le := self._names[n]).expires is not None)
        if len(mine) - len(idle) >= self.quota:
            raise NameUnavailable(
                f"client {token_name} already uses its quota of {self.quota} name(s)"
            )
        for _, n in idle[: len(mine) - self.quota + 1]:
            self._drop(n)

    def release(self, name: str, owner: Owner, now: float) -> None:
        """The holder's session ended: keep the name for it until the lease runs out."""
        le = self._names.get(name)
        if le is not None and le.owner == owner and le.expires is None:
            le.expires = now + self.lease
            heap = self._expiries
            heapq.heappush(heap, (le.expires, name))
            if len(heap) > 2 * len(self._names) + 64:  # re-taken leases left stale entries
                heap[:] = [(e, n) for e, n in heap if (x := self._names.get(n)) and x.expires == e]
                heapq.heapify(heap)

    def forget(self, name: str) -> None:
        if name in self._names:
            self._drop(name)

    def leased(self, name: str, now: float) -> bool:
        """Held or leased (a client is reconnecting): worth a 503, not a 404."""
        self._expire(now)
        return name in self._names
