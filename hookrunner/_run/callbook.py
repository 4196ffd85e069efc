"""Which calls the runner follows, has finished with, or keeps waiting for a free slot.

Calls reach a long-running runner from several places at once (the config, every listing, pushes, ``POST
/calls``) and the same id arrives many times: a listing shows a call on every poll until Atoms marks it completed,
which is after our stream ended. The book is the one place that decides "new, follow it" exactly once per id, and
it remembers finished ids (the most recent ``remember`` of them) so that a later listing cannot re-subscribe a
call that is over. ``max_calls`` caps concurrent subscriptions; calls beyond it wait in arrival order.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from enum import Enum

__all__ = ["CallBook", "Offer"]


class Offer(str, Enum):
    """What ``CallBook.offer`` decided about an id."""

    NEW = "new"  # follow it now
    FOLLOWING = "following"  # already followed
    FINISHED = "finished"  # followed before and over
    WAITING = "waiting"  # already waiting for a slot
    QUEUED = "queued"  # over max_calls: now waiting for a slot
    REFUSED = "refused"  # not a call id (hookrunner.callids): never followed


class CallBook:
    def __init__(self, max_calls: int, *, remember: int = 100_000, retry_after: float = 30.0) -> None:
        self.max_calls = max_calls
        self.active: set[str] = set()
        self._waiting: deque[str] = deque()
        self._waiting_ids: set[str] = set()
        self._finished: OrderedDict[str, float] = OrderedDict()  # id -> when it may be offered again (inf: never)
        self._remember = remember
        self._retry_after = retry_after

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def offer(self, call_id: str, now: float = 0.0) -> Offer:
        if call_id in self.active:
            return Offer.FOLLOWING
        again_at = self._finished.get(call_id)
        if again_at is not None:
            if now < again_at:
                return Offer.FINISHED
            del self._finished[call_id]
        if call_id in self._waiting_ids:
            return Offer.WAITING
        if len(self.active) >= self.max_calls:
            self._waiting.append(call_id)
            self._waiting_ids.add(call_id)
            return Offer.QUEUED
        self.active.add(call_id)
        return Offer.NEW

    def finish(self, call_id: str, *, final: bool = True, now: float = 0.0, promote: bool = True) -> str | None:
        """Mark a followed call over (for good, or until ``retry_after`` when not ``final``); return the waiting
        call that takes its slot (now active), if any and if ``promote``."""
        self.active.discard(call_id)
        self._finished[call_id] = math.inf if final else now + self._retry_after
        self._finished.move_to_end(call_id)
        while len(self._finished) > self._remember:
            self._finished.popitem(last=False)
        if promote and self._waiting and len(self.active) < self.max_calls:
            next_id = self._waiting.popleft()
            self._waiting_ids.discard(next_id)
            self.active.add(next_id)
            return next_id
        return None

    def followed(self) -> list[str]:
        """Every call followed now or waiting for a slot (active first)."""
        return [*self.active, *self._waiting]

    def drop_waiting(self) -> list[str]:
        """Every call still waiting (the runner is stopping): they will never be followed."""
        left = list(self._waiting)
        self._waiting.clear()
        self._waiting_ids.clear()
        return left
