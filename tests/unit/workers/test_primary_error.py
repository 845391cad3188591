"""`primary_error` names the cause, not a side effect: after AUTH_FAILED the tlssession
closed its channels and networkio's reader failed on one, and a layer with its own nursery
wraps its error in a group (ServiceFailed(name, ExceptionGroup([...]))), so the
BrokenResourceError came out first as `internal error: BrokenResourceError` (2 runs in 70)."""

from __future__ import annotations

import pytest
import trio

from trivpn.errors import AuthFailed
from trivpn.workers.manager import ServiceFailed, primary_error


def _layer(name: str, exc: BaseException) -> ServiceFailed:
    """A layer whose own nursery failed: the shape start_named gives it."""
    return ServiceFailed(name, ExceptionGroup("inner", [exc]))


@pytest.mark.parametrize("side", [trio.BrokenResourceError(), trio.ClosedResourceError()])
@pytest.mark.parametrize("first", [True, False])
def test_our_error_beats_a_closed_channel_at_any_depth(side: Exception, first: bool) -> None:
    auth = AuthFailed("AUTH_FAILED")
    layers = [_layer("networkio", side), _layer("tlssession", auth)]
    group = ExceptionGroup("stack", layers if first else layers[::-1])
    assert primary_error(ExceptionGroup("root", [ServiceFailed("session", group)])) is auth


def test_any_other_error_beats_a_closed_channel() -> None:
    boom = ValueError("boom")
    group = ExceptionGroup("stack", [_layer("networkio", trio.BrokenResourceError()), _layer("x", boom)])
    assert primary_error(group) is boom


def test_a_closed_channel_alone_is_still_reported() -> None:
    broken = trio.BrokenResourceError("gone")
    assert primary_error(ExceptionGroup("stack", [_layer("networkio", broken)])) is broken
    assert primary_error(broken) is broken
