"""What ``GET /metrics`` shows, in Prometheus' text format (``prometheus_client``).

The runner already counts everything in ``Stats`` (the end-of-run summary reads it); the collector here turns
those counters into metric families at scrape time instead of keeping a second set of counters in step. Hook
durations are the one thing Stats does not hold: they are a ``prometheus_client`` histogram, observed by the
dispatcher only when the server is on (about 0.7 µs a hook call: with the four bundled plugins, ~4 hook calls
and +5-7 µs of CPU per event, measured by benchmarks/bench_service.py). Each runner has its own registry, so two
runners in one process (tests) never mix their numbers; plugins may register their own metrics in
``app.metrics.registry`` and they appear on the same page.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hookrunner._run.callbook import CallBook
    from hookrunner._delivery.outbox import Outbox
    from hookrunner._core.stats import Stats

__all__ = ["RunnerMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Hook durations from 100 µs (a keyword match) to 10 s (runner.hook_timeout's default).
HOOK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RunnerMetrics:
    """One runner's registry: its counters, hook durations, and the outboxes plugins asked it to track."""

    def __init__(self, stats: Stats, calls: CallBook) -> None:
        # auto_describe: registering a collector collects it once, so a plugin's metric named like one of ours is
        # refused at registration instead of breaking every scrape with a duplicate family
        self.registry = CollectorRegistry(auto_describe=True)
        self._outboxes: weakref.WeakSet[Outbox] = weakref.WeakSet()
        self.hook_duration = Histogram(
            "hookrunner_hook_duration_seconds",
            "Time one plugin's implementation of one hook took",
            ["plugin", "hook"],
            buckets=HOOK_BUCKETS,
            registry=self.registry,
        )
        self._observers: dict[tuple[str, str], Callable[[float], None]] = {}
        self.registry.register(_StatsCollector(stats, calls, self._outboxes))
        # process_* (CPU seconds, resident memory, open fds, start time): what every exporter shows, so the usual
        # dashboards and alerts (memory growth, fd leaks) work on hookrunner unchanged
        ProcessCollector(registry=self.registry)

    def track_outbox(self, outbox: Outbox) -> None:
        """Show an outbox's delivered / retried / dead-lettered counts (labelled by plugin and endpoint)."""
        self._outboxes.add(outbox)

    def observe_hook(self, plugin: str, hook: str, seconds: float) -> None:
        observe = self._observers.get((plugin, hook))
        if observe is None:
            observe = self._observers[(plugin, hook)] = self.hook_duration.labels(plugin, hook).observe
        observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StatsCollector(Collector):
    def __init__(self, stats: Stats, calls: CallBook, outboxes: weakref.WeakSet[Outbox]) -> None:
        self._stats = stats
        self._calls = calls
        self._outboxes = outboxes

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield GaugeMetricFamily("hookrunner_calls_active", "Calls being followed now", value=len(self._calls.active))
        yield GaugeMetricFamily(
            "hookrunner_calls_waiting", "Calls waiting for a free slot (runner.max_calls)", value=self._calls.waiting
        )
        yield _labelled("hookrunner_calls_finished", "Calls over, by reason", "reason", stats.calls_finished)
        yield _labelled("hookrunner_calls_discovered", "Calls found, by where from", "source", stats.calls_discovered)
        yield CounterMetricFamily(
            "hookrunner_calls_over_capacity", "Calls that had to wait for a slot", value=stats.calls_over_capacity
        )
        yield CounterMetricFamily(
            "hookrunner_calls_never_followed", "Calls still waiting when the runner stopped", value=stats.calls_never_followed
        )
        yield _labelled("hookrunner_events", "Events dispatched, by type", "type", stats.events_by_type)
        yield CounterMetricFamily("hookrunner_events_received", "New events read from streams", value=stats.events_received)
        yield CounterMetricFamily(
            "hookrunner_duplicates_skipped", "Events seen again after a reconnect", value=stats.duplicates_skipped
        )
        yield CounterMetricFamily("hookrunner_reconnects", "Stream reconnects", value=stats.reconnects)
        yield CounterMetricFamily("hookrunner_malformed_lines", "Stream lines that were not events", value=stats.malformed_lines)
        yield CounterMetricFamily(
            "hookrunner_events_without_text", "Transcriptions and agent turns without their text field", value=stats.events_without_text
        )
        yield CounterMetricFamily(
            "hookrunner_events_spooled", "Events received but written to the spool file", value=stats.events_spooled
        )
        yield _labelled("hookrunner_hook_errors", "Hook implementations that raised", "plugin", stats.hook_errors)
        yield _labelled("hookrunner_hook_timeouts", "Hook implementations over runner.hook_timeout", "plugin", stats.hook_timeouts)
        yield CounterMetricFamily(
            "hookrunner_events_backfilled",
            "Events the stream skipped, found in the call's stored conversation and dispatched",
            value=stats.events_backfilled,
        )
        yield _labelled("hookrunner_backfills", "Ended calls compared with their stored conversation, by outcome", "outcome", stats.backfills)
        yield CounterMetricFamily(
            "hookrunner_backfill_requests", "Stored conversations requested (GET /conversation/ID)", value=stats.backfill_requests
        )
        yield CounterMetricFamily("hookrunner_triggers", "Triggers dispatched", value=stats.triggers)
        yield CounterMetricFamily("hookrunner_triggers_lost", "Triggers not dispatched before the grace ran out", value=stats.triggers_lost)
        yield CounterMetricFamily("hookrunner_discovery_listings", "Complete listings of active calls", value=stats.listings)
        yield CounterMetricFamily(
            "hookrunner_discovery_listing_requests", "Listing pages requested", value=stats.listing_requests
        )
        yield CounterMetricFamily(
            "hookrunner_discovery_listing_failures", "Listings that failed and were retried", value=stats.listing_failures
        )
        yield CounterMetricFamily(
            "hookrunner_oversized_events", "Events skipped for a line over runner.max_event_bytes", value=stats.oversized_events
        )
        yield _labelled(
            "hookrunner_call_ids_refused", "Ids that are not call ids, by where they came from", "source", stats.call_ids_refused
        )
        yield _labelled(
            "hookrunner_platform_webhooks", "Atoms webhook deliveries received, by outcome", "outcome", stats.platform_webhooks
        )
        outboxes = sorted(self._outboxes, key=lambda outbox: (outbox.plugin, outbox.name))
        for field, help_text in (
            ("delivered", "Messages delivered"),
            ("retried", "Delivery attempts retried"),
            ("dead_lettered", "Messages written to the dead-letter file"),
        ):
            family = CounterMetricFamily(f"hookrunner_outbox_{field}", help_text, labels=["plugin", "endpoint"])
            for outbox in outboxes:
                family.add_metric([outbox.plugin, outbox.name], getattr(outbox.stats, field))
            yield family


def _labelled(name: str, help_text: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=[label])
    for key, value in sorted(counts.items()):
        family.add_metric([key], value)
    return family
