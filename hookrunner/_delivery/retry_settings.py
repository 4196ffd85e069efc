"""The retry keys every notifier declares (``max_attempts``, ``max_retry_time``, ``retry_initial_delay``,
``retry_max_delay``, ``max_retry_after``), written once so that their names, kinds, checks and wording cannot drift
apart between plugins; each plugin keeps its own defaults (Slack gives up sooner than a webhook receiver)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hookrunner._core.settings import Setting, at_least

__all__ = ["retry_settings", "retry_problems"]

_SECONDS = "a number of seconds"


def retry_settings(
    *,
    max_attempts: int,
    max_retry_time: float,
    retry_max_delay: float,
    retry_after_doc: str,
    retry_initial_delay: float = 1.0,
    max_retry_after: float = 300.0,
) -> dict[str, Setting]:
    """The five retry keys with these defaults, for a plugin's ``settings_schema`` (or an item table's);
    ``retry_after_doc`` says what ``max_retry_after`` bounds for this plugin (``hookrunner plugins --settings``)."""
    return {
        "max_attempts": Setting("int", max_attempts, check=at_least(1)),
        "max_retry_time": Setting("number", max_retry_time, check=at_least(0), expected=_SECONDS),
        "retry_initial_delay": Setting("number", retry_initial_delay, check=at_least(0.001), expected=_SECONDS),
        "retry_max_delay": Setting("number", retry_max_delay, check=at_least(0.001), expected=_SECONDS),
        "max_retry_after": Setting(
            "number", max_retry_after, check=at_least(0.001), expected=_SECONDS,
            doc=retry_after_doc,
        ),  # fmt: skip
    }


def retry_problems(fields: Mapping[str, Any], where: str = "") -> list[str]:
    """What the keys get wrong together (each key alone is checked by its ``Setting``); ``where`` prefixes the key
    path (``endpoints[0]``), empty for a plugin's top-level table."""
    prefix = f"{where}." if where else ""
    if fields["retry_max_delay"] < fields["retry_initial_delay"]:
        return [f"{prefix}retry_max_delay: expected at least retry_initial_delay"]
    return []
