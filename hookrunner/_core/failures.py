"""Telling a failure from a cancellation, and naming it: every task that isolates a failure (a hook, an outbox
delivery, one call) catches everything but trio's cancellation and logs the first real exception.
"""

from __future__ import annotations

import trio

__all__ = ["first_leaf", "is_cancellation"]


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: the one worth naming in a log line."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is trio cancelling the code (alone or in a group): the one exception not to catch."""
    if isinstance(exc, trio.Cancelled):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(trio.Cancelled) is not None
