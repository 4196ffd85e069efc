"""One rate limit for every request to Atoms' REST API (``atoms.max_requests_per_second``).

Atoms limits an organisation's requests per second (about 10 on the free plan), across all of its clients. The
listing poll and backfill share this limiter, so a burst of calls ending together (each asking for its
conversation) can never push discovery over the limit; the listing is also served ahead of queued backfills, so
it is never starved by them either. Requests are spaced evenly rather than allowed in bursts: a burst is exactly
what a per-second limit on the server refuses.
"""

from __future__ import annotations

import math

import trio

__all__ = ["RateLimiter"]


class RateLimiter:
    """At most ``rate`` requests per second; ``await acquire()`` before each request."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = -math.inf  # the trio time of the next free slot
        self._queue = trio.Lock()  # (trio's lock is fair: queued requests go in arrival order)

    async def acquire(self, *, ahead: bool = False) -> None:
        """Wait for a slot. ``ahead``: take the next free slot before requests queued without it (the listing)."""
        if ahead:
            await self._take_slot()
            return
        async with self._queue:
            await self._take_slot()

    async def _take_slot(self) -> None:
        now = trio.current_time()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await trio.sleep_until(slot)
