"""A message an outbox delivers, what one attempt at it came to, and the function that makes the attempt: the words
the outbox, the dead-letter file and a notifier plugin's deliverer share (``hookrunner.delivery`` exports them).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["OutboxMessage", "Outcome", "Deliverer"]


@dataclass
class OutboxMessage:
    """One message for one endpoint. ``id`` stays the same on every attempt (a receiver's idempotency key)."""

    id: str
    key: str
    body: Any  # JSON-ready payload; the deliverer encodes it (a batch is a list of bodies)
    created: float = field(default_factory=time.monotonic)
    attempts: int = 0
    first_attempt: datetime | None = None
    last_attempt: datetime | None = None
    last_status: int | None = None
    last_error: str | None = None
    #: Its row in the journal (``[state] path``) while it is neither delivered nor dead-lettered.
    journal_handle: int | None = None
    #: Wall time (epoch seconds) before which it is not attempted again: its retry schedule, kept in the journal
    #: so that a restart continues it rather than hammering a receiver that asked for time.
    not_before: float | None = None


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to; build it with the class methods."""

    kind: str  # delivered | retry | reject | gone
    why: str = ""
    status: int | None = None
    retry_after: float | None = None

    @classmethod
    def delivered(cls, status: int | None = None) -> Outcome:
        return cls("delivered", status=status)

    @classmethod
    def retry(cls, why: str, status: int | None = None, retry_after: float | None = None) -> Outcome:
        """Worth another attempt later (network error, timeout, 408, 429, 5xx)."""
        return cls("retry", why, status, retry_after)

    @classmethod
    def reject(cls, why: str, status: int | None = None) -> Outcome:
        """This message will never be accepted as it is: dead-letter it, go on with the next."""
        return cls("reject", why, status)

    @classmethod
    def gone(cls, why: str, status: int | None = None) -> Outcome:
        """The endpoint will accept nothing more (410 Gone, revoked credentials): stop it for this run."""
        return cls("gone", why, status)


Deliverer = Callable[[list[OutboxMessage]], Awaitable[Outcome]]
