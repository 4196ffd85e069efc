"""Retry timing shared by subscriptions and outboxes: exponential backoff with full jitter, and Retry-After."""

from __future__ import annotations

import email.utils
import math
import random
from datetime import datetime, timezone
from typing import Protocol


class BackoffPolicy(Protocol):
    initial_delay: float
    max_delay: float


def backoff_delay(attempt: int, policy: BackoffPolicy, retry_after: float | None = None) -> float:
    """Full jitter: uniform in [0, min(max_delay, initial_delay * 2**(attempt-1))], never below Retry-After.

    Full jitter spreads a crowd of clients that failed together (every call after a server restart) instead of
    having them retry in lockstep.
    """
    ceiling = min(policy.max_delay, policy.initial_delay * 2 ** max(attempt - 1, 0))
    delay = random.uniform(0, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
