"""The reconnect policy's arithmetic: full jitter under a growing ceiling, never below Retry-After."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from hookrunner._core.config import ReconnectConfig
from hookrunner._core.backoff import backoff_delay, parse_retry_after
from hookrunner._stream.subscription import SeenEvents

POLICY = ReconnectConfig(initial_delay=1.0, max_delay=8.0, max_attempts=0, max_retry_after=300.0)


def test_backoff_is_full_jitter_under_an_exponential_ceiling_capped_by_max_delay() -> None:
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = [backoff_delay(attempt, POLICY) for _ in range(2000)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.9 and min(delays) < ceiling * 0.1  # spread over the whole range


def test_retry_after_is_a_floor_on_the_delay() -> None:
    assert all(backoff_delay(1, POLICY, retry_after=5.0) >= 5.0 for _ in range(200))


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 <= parse_retry_after(format_datetime(when, usegmt=True)) <= 31
    past = datetime.now(timezone.utc) - timedelta(seconds=30)
    assert parse_retry_after(format_datetime(past, usegmt=True)) == 0.0


def test_seen_events_remember_at_least_the_last_limit_keys_and_at_most_twice_that() -> None:
    seen = SeenEvents(limit=3)
    assert [seen.add(k) for k in "abc"] == [True, True, True]
    assert seen.add("a") is False
    for count, key in enumerate("defghijklm", start=4):
        assert seen.add(key) is True
        added = "abcdefghijklm"[:count]
        assert all(k in seen for k in added[-3:]), f"one of the last 3 forgotten after {added}"
        assert sum(k in seen for k in added) <= 6
    assert seen.add("a") is True, "the oldest are forgotten"
