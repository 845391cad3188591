"""How the library raises what ended a run: the one error that caused it, never a flattened
group that hides others.

A run's nursery reports failures as an exception group: the cause (say `AuthFailed` from
the TLS layer), wrapped with the layer's name, next to its side effects (channels the
failing layer closed) and cancellations. `raise_cause` raises the cause itself, so that
`except AuthFailed:` works, with the whole group chained as its `__context__` (tracebacks
show both). When the group holds another error that is not a side effect (a bug in a second
layer, or an application error next to an engine error) the group is re-raised unchanged.
"""

from __future__ import annotations

from typing import NoReturn

import trio

from trivpn.workers.manager import ServiceFailed, primary_error

__all__ = ["raise_cause"]

#: What a layer sees when another one failed first: never a cause of its own.
SIDE_EFFECTS = (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel)


def _leaves(exc: BaseException) -> list[BaseException]:
    """Every error in `exc`, out of groups and out of the layers' name wrappers."""
    while isinstance(exc, ServiceFailed):
        exc = exc.error
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]


def raise_cause(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the cause of `group` (chained to it), or `group` itself (see the module docstring).

    Call it inside the `except` block that caught `group`, so the chaining is automatic."""
    leaves = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
    if not leaves:
        raise group
    cause = primary_error(group)
    others = [e for e in leaves if e is not cause and not isinstance(e, SIDE_EFFECTS)]
    if others:
        raise group
    raise cause
