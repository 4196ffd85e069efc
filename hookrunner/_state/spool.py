"""Where received input goes when it could not be handed to plugins in time: a JSONL file a user can replay from.

An event that was received must be dispatched or written somewhere a user can get it back from, and so must an
accepted Atoms webhook delivery. At shutdown, once ``runner.shutdown_grace`` has run out, what is still buffered
is appended here:

- events exactly as Atoms sent them (with ``call_id`` added where it was missing), one JSON object a line:
  ``hookrunner simulate FILE`` serves them again, so the plugins can be run on them with ``hookrunner run``;
- platform webhook deliveries as ``{"platform_webhook": BODY, "delivery_id": ...}`` lines (the simulator skips
  them when replaying events).

When the file cannot be written, every line goes whole into the log instead, as the dead-letter file does:
what was received is never only counted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from hookrunner._core.events import Event
from hookrunner._core.platform_delivery import PlatformDelivery
from hookrunner._core.text import json_line

__all__ = ["spool_events", "spool_platform_webhooks", "PLATFORM_WEBHOOK_KEY"]

log = logging.getLogger("hookrunner.spool")

#: The key that marks a spooled platform webhook delivery (and tells it from an event).
PLATFORM_WEBHOOK_KEY = "platform_webhook"


def _replayable(raw: dict, call_id: str) -> dict:
    """The event as received, with the call id added where Atoms left it out (lifecycle events may)."""
    return raw if "call_id" in raw else {**raw, "call_id": call_id}


def spool_events(path: Path, call_id: str, events: Iterable[Event]) -> int:
    """Append ``events`` to ``path``; return how many were kept (in the file, or whole in the log)."""
    lines = [json_line(_replayable(event.raw, call_id)) for event in events]
    if lines and _append(path, lines, f"{call_id}: {len(lines)} received events"):
        log.error(
            "%s: %d received events were not dispatched before runner.shutdown_grace ran out; written to %s "
            "(replay them with `hookrunner simulate %s`)",
            call_id,
            len(lines),
            path,
            path,
        )
    return len(lines)


def spool_platform_webhooks(
    path: Path, deliveries: Iterable[PlatformDelivery], *, why: str = "not dispatched before runner.shutdown_grace ran out"
) -> int:
    """Append signed platform webhook deliveries that no plugin received (``why``); return how many were kept."""
    lines = [
        json_line({PLATFORM_WEBHOOK_KEY: delivery.body, "delivery_id": delivery.id, "call_id": delivery.call_id, "why": why})
        for delivery in deliveries
    ]
    if lines and _append(path, lines, f"atoms webhook: {len(lines)} signed deliveries"):
        log.error("atoms webhook: %d signed deliveries %s; written to %s", len(lines), why, path)
    return len(lines)


def _append(path: Path, lines: list[bytes], what: str) -> bool:
    """Append ``lines``; False when the file failed and they went whole into the log instead."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as handle:
            handle.writelines(lines)
    except OSError as exc:
        log.error("%s were not dispatched, and writing them to %s failed (%s); they follow", what, path, exc.strerror)
        for line in lines:
            log.error("spooled: %s", line.decode("utf-8", "replace").rstrip("\n"))
        return False
    return True
