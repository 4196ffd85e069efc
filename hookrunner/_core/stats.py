"""Counters the runner keeps, so that what went wrong is a number a user can see, not only a log line."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hookrunner._core.text import count


@dataclass
class Stats:
    events_received: int = 0  # new events read from streams (not counting duplicates)
    events_by_type: Counter[str] = field(default_factory=Counter)
    duplicates_skipped: int = 0
    malformed_lines: int = 0  # stream events that were not events (oversized ones included)
    oversized_events: int = 0  # events skipped for a line or data over runner.max_event_bytes
    events_without_text: int = 0  # transcriptions and agent turns without their text field (passed on, text empty)
    reconnects: int = 0
    hook_errors: Counter[str] = field(default_factory=Counter)  # by plugin name
    hook_timeouts: Counter[str] = field(default_factory=Counter)  # by plugin name
    calls_finished: Counter[str] = field(default_factory=Counter)  # by reason
    triggers: int = 0
    triggers_lost: int = 0  # emitted but not dispatched before the grace ran out (each logged)
    events_spooled: int = 0  # received but not dispatched in time: written to runner.spool_file
    # --- finding calls (service mode) ---
    calls_discovered: Counter[str] = field(default_factory=Counter)  # new calls followed, by where they came from
    calls_over_capacity: int = 0  # calls that had to wait for a slot (runner.max_calls), each logged once
    calls_never_followed: int = 0  # still waiting for a slot when the runner stopped, each logged
    listings: int = 0  # complete listings of active calls
    listing_requests: int = 0  # pages requested
    listing_failures: int = 0  # listings that failed (and were retried)
    platform_webhooks: Counter[str] = field(default_factory=Counter)  # POST /atoms/webhook, by outcome
    call_ids_refused: Counter[str] = field(default_factory=Counter)  # ids that are not call ids, by intake
    # --- backfill ---
    events_backfilled: int = 0  # events the stream skipped, found in the stored conversation and dispatched
    backfills: Counter[str] = field(default_factory=Counter)  # ended calls compared, by outcome
    backfill_requests: int = 0  # GET /conversation/{callId} requests

    def summary(self) -> str:
        """One line for the end of a run."""
        parts = [
            count(sum(self.calls_finished.values()), "call")
            + " ("
            + ", ".join(f"{n} {reason}" for reason, n in sorted(self.calls_finished.items()))
            + ")",
            count(sum(self.events_by_type.values()), "event"),
            count(self.triggers, "trigger"),
            count(self.reconnects, "reconnect"),
            count(self.malformed_lines, "malformed line"),
            count(sum(self.hook_errors.values()), "hook error"),
            count(sum(self.hook_timeouts.values()), "hook timeout"),
        ]
        if self.events_backfilled:
            parts.append(count(self.events_backfilled, "event") + " backfilled")
        if self.events_spooled:
            parts.append(count(self.events_spooled, "event") + " not dispatched, written to the spool file")
        return "; ".join(parts)
