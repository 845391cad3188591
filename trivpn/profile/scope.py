"""Scopes: what one run of option lines set, and how a ``<connection>`` block overlays.

The global options of a profile fill one :class:`Scope`; each ``<connection>`` block
fills a fresh one of its own.  A scope is a :class:`Profile` under construction plus
the parse-only values the final checks need (:class:`Extras`), and it remembers which
fields its lines assigned.  :meth:`Scope.overlay` gives the scope of one complete
profile: a copy of the global scope with the block's assigned fields on top.  So the
text is parsed once, however many blocks it has.
"""

from __future__ import annotations

from dataclasses import field, fields, replace
from typing import Any

from trivpn.profile.model import Profile
from trivpn.records import dataclass

__all__ = ["APPEND_FIELDS", "Extras", "RawRemote", "Scope"]


@dataclass(frozen=True, slots=True)
class RawRemote:
    """A ``remote`` line before the ``port``/``proto`` defaults are applied."""

    line: int
    host: str
    port: int | None
    proto: str | None


@dataclass(slots=True)
class Extras:
    """Parse-only values: what the final checks use besides the :class:`Profile` fields."""

    dev: str | None = None
    dev_kind: str | None = None  # `dev-type` as given; Profile.dev_type is the outcome
    port: int | None = None  # `port`/`rport`: the default for remotes without one
    proto: str | None = None  # `proto`: likewise
    raw_remotes: list[RawRemote] = field(default_factory=list)
    http_version: str | None = None
    http_agent: str | None = None
    #: custom headers, each with the line that added it (to report the one too many)
    http_headers: list[tuple[int, tuple[str, str | None]]] = field(default_factory=list)
    http_proxy_user_pass: tuple[str, str] | None = None


_PROFILE_FIELDS = frozenset(f.name for f in fields(Profile))
_EXTRA_FIELDS = frozenset(f.name for f in fields(Extras))
#: Fields where a ``<connection>`` block adds to the global value instead of replacing it.
APPEND_FIELDS = frozenset({"http_headers"})


class Scope:
    """The values set by the global options, or by one ``<connection>`` block.

    ``lines`` maps an option name to the line it was last given on (errors about
    option combinations name it); ``warnings`` are ``(line, text)`` pairs.
    """

    __slots__ = ("profile", "extra", "assigned", "lines", "warnings")

    def __init__(self, profile: Profile | None = None, extra: Extras | None = None) -> None:
        self.profile = Profile(remotes=[]) if profile is None else profile
        self.extra = Extras() if extra is None else extra
        self.assigned: set[str] = set()
        self.lines: dict[str, int] = {}
        self.warnings: list[tuple[int, str]] = []

    @staticmethod
    def is_field(name: str) -> bool:
        return name in _PROFILE_FIELDS or name in _EXTRA_FIELDS

    def _owner(self, name: str) -> Profile | Extras:
        if name in _PROFILE_FIELDS:
            return self.profile
        if name in _EXTRA_FIELDS:
            return self.extra
        raise KeyError(name)

    def get(self, name: str) -> Any:
        """The current value of field ``name`` (typed by the field, hence Any)."""
        return getattr(self._owner(name), name)

    def set(self, name: str, value: object) -> None:
        """Assign field ``name``; a later assignment replaces an earlier one."""
        setattr(self._owner(name), name, value)
        self.assigned.add(name)

    def append(self, name: str, item: object) -> None:
        """Add ``item`` to the list in field ``name`` (in place: the walk is linear)."""
        self.get(name).append(item)
        self.assigned.add(name)

    def warn(self, line: int, text: str) -> None:
        self.warnings.append((line, text))

    def overlay(self, block: Scope) -> Scope:
        """A new scope: this one with ``block``'s assignments laid over it.

        Neither input changes.  Fields in :data:`APPEND_FIELDS` become this scope's
        items followed by the block's; every other field the block assigned replaces
        ours.  Warnings are not carried over (the caller decides whose it reports).
        """
        out = Scope(replace(self.profile), replace(self.extra))
        for name in block.assigned:
            value = block.get(name)
            if name in APPEND_FIELDS:
                value = [*self.get(name), *value]
            out.set(name, value)
        out.assigned |= self.assigned
        out.lines = {**self.lines, **block.lines}
        return out
