"""An ordered queue in front of one hook: triggers before ``on_trigger``, Atoms webhooks before
``on_platform_webhook``. Items are handed over one at a time in the order queued; with the journal on, each is
written when queued and marked when its hook returned, so a kill loses none and a restart dispatches the rest first.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import trio

__all__ = ["HookQueue", "left_in"]

log = logging.getLogger("hookrunner.runner")

T = TypeVar("T")


class HookQueue(Generic[T]):
    """Unbounded on purpose: what is queued was already accepted (an emitted trigger, a webhook answered 200)."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[T](math.inf)
        self._rows: deque[int] = deque()  # journal rows of the queued items, in order
        self._written: Callable[[T], int] | None = None
        self._done: Callable[[int], None] | None = None

    def keep_in_journal(self, written: Callable[[T], int], done: Callable[[int], None]) -> None:
        """From now on every item queued is ``written`` (its row) and ``done`` once its hook returned."""
        self._written, self._done = written, done

    def put(self, item: T) -> bool:
        """Queue ``item``; False once the queue is closed (the runner no longer dispatches these)."""
        try:
            self._send.send_nowait(item)
        except trio.ClosedResourceError:
            return False
        if self._written is not None:
            self._rows.append(self._written(item))
        return True

    def restore(self, rows: list[tuple[int, T | None]]) -> None:
        """Queue first what a previous run journaled (row, item) and never dispatched; an item that cannot be read
        again (None: only a damaged or outdated file does that) is logged and dropped."""
        for row, item in rows:
            if item is None:
                log.error("journal: an item (%d) could not be read again; it is dropped", row)
                if self._done is not None:
                    self._done(row)
                continue
            self._send.send_nowait(item)
            self._rows.append(row)

    def close(self) -> None:
        """No more items: ``dispatch_each`` returns once the queue is empty."""
        self._send.close()

    async def dispatch_each(self, dispatch: Callable[[T], Awaitable[None]]) -> None:
        """Hand every item to ``dispatch`` in order until the queue is closed and empty (or the caller's scope is
        cancelled: ``left`` then says what was not dispatched)."""
        async for item in self._receive:
            await dispatch(item)
            if self._done is not None:
                self._done(self._rows.popleft())

    def left(self) -> list[T]:
        """What is still queued, taken without waiting (a grace ran out before it was dispatched)."""
        return left_in(self._receive)


def left_in(receive: trio.MemoryReceiveChannel[Any]) -> list[Any]:
    """What is still queued in a channel, taken without waiting (a grace ran out before it was dispatched)."""
    left = []
    while True:
        try:
            left.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return left
