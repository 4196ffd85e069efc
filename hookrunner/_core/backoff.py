"""Retry timing shared by subscriptions, listings and outboxes: exponential backoff with full jitter, and a
bounded Retry-After.

Both halves hold for any input: the exponent is capped, so attempt 10,000 of an outage that never ends gives
``max_delay`` instead of a float overflow that ends the loop, and a server's ``Retry-After`` is honoured only up
to the policy's ``max_retry_after``, so ``Retry-After: 86400`` cannot hold a call or a channel for a day.
"""

from __future__ import annotations

import email.utils
import math
import random
from datetime import datetime, timezone
from typing import Protocol

#: Past this many doublings every policy is at its ``max_delay`` already (2**60 s outlives the universe).
MAX_DOUBLINGS = 60
#: The longest a Retry-After may hold a retry unless a policy says otherwise.
DEFAULT_MAX_RETRY_AFTER = 300.0


class BackoffPolicy(Protocol):
    @property
    def initial_delay(self) -> float: ...

    @property
    def max_delay(self) -> float: ...

    @property
    def max_retry_after(self) -> float: ...


def backoff_delay(attempt: int, policy: BackoffPolicy, retry_after: float | None = None) -> float:
    """Full jitter: uniform in [0, min(max_delay, initial_delay * 2**(attempt-1))], never below Retry-After (itself
    capped at ``policy.max_retry_after``).

    Full jitter spreads a crowd of clients that failed together (every call after a server restart) instead of
    having them retry in lockstep.
    """
    doublings = min(max(attempt - 1, 0), MAX_DOUBLINGS)
    ceiling = min(policy.max_delay, policy.initial_delay * 2.0**doublings)
    delay = random.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, capped_retry_after(retry_after, policy))
    return delay


def capped_retry_after(retry_after: float, policy: BackoffPolicy) -> float:
    """``retry_after`` seconds, at most the policy's ``max_retry_after``."""
    return min(max(0.0, retry_after), policy.max_retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (None when it is neither)."""
    if not value:
        return None
    value = value.strip()[:64]  # a header is outside input: no date or number is longer
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except OverflowError:
        return None
