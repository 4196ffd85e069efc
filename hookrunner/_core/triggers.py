"""What detector plugins conclude about a call, carried to notifier plugins through ``on_trigger``."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

import msgspec

__all__ = ["Trigger", "SEVERITIES", "type_selected"]

SEVERITIES = ("info", "warning", "critical")


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Trigger(msgspec.Struct, frozen=True, kw_only=True):
    """A derived event: "rule X fired on call Y because of event Z".

    ``type`` names the kind of detection (``"keyword"``); notifiers see it as ``trigger.<type>``.
    ``event_id``/``event_type`` name the event that caused it (``event_type`` may be a pseudo-type such as
    ``"absent"`` for a rule that fires on something *not* said). ``data`` carries detector-specific fields and is
    what a notifier forwards as the trigger's payload besides the fields here.
    """

    type: str
    call_id: str
    rule: str
    event_id: str | None = None
    event_type: str | None = None
    timestamp: datetime | None = None
    detected_at: datetime = msgspec.field(default_factory=_now)
    severity: str = "info"
    labels: dict[str, str] = {}
    data: dict[str, Any] = {}
    #: Name of the plugin that emitted it (filled in by the runner).
    source: str | None = None

    @property
    def full_type(self) -> str:
        """``trigger.<type>``: the name notifiers filter on."""
        return f"trigger.{self.type}"


def type_selected(message_type: str, patterns: Iterable[str]) -> bool:
    """Whether an event type, or ``trigger.<type>``, is picked by a notifier's ``events`` globs.

    ``"trigger"`` alone stands for every trigger, as ``"trigger.*"`` does.
    """
    return any(
        message_type.startswith("trigger.") if pattern == "trigger" else fnmatch.fnmatchcase(message_type, pattern)
        for pattern in patterns
    )
