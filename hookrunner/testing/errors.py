"""A test's own failure, shown as itself: trio nurseries wrap whatever leaves them in an ExceptionGroup, so an
``assert`` failing inside ``async with simulator(...)`` would otherwise reach pytest as a group of one, and
``pytest.raises(AssertionError)`` around it would not match."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def plain_errors() -> Iterator[None]:
    """Re-raise a lone exception out of (nested) exception groups; several, or a cancellation, stay grouped."""
    try:
        yield
    except BaseExceptionGroup as group:
        lone: BaseException = group
        while isinstance(lone, BaseExceptionGroup) and len(lone.exceptions) == 1:
            lone = lone.exceptions[0]
        if isinstance(lone, BaseExceptionGroup) or not isinstance(lone, Exception):
            raise
        raise lone from None
