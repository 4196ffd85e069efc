"""Turning triggers and events into Slack messages: templates, escaping, Block Kit, Slack's size limits.

Text spoken by callers is data, not markup: every value that comes from a call is escaped (``&``, ``<``, ``>``)
before it enters a message, so nobody can inject a mention, a link or a broadcast by what they say. The template
itself is the operator's and is used as written (it may hold their own mentions and links).
"""

from __future__ import annotations

import string
from typing import Any

from hookrunner import Event, Trigger

__all__ = [
    "DEFAULT_TEMPLATE",
    "PLACEHOLDERS",
    "escape",
    "template_problem",
    "trigger_fields",
    "event_fields",
    "render",
    "message_payload",
    "truncate",
]

SECTION_TEXT_LIMIT = 3000  # characters in one section block
#: Characters of a message's top-level text: the fallback notifications and screen readers show. Slack truncates at
#: 40,000 and advises at most 4,000; the blocks carry the full texts.
TEXT_LIMIT = 4000
BLOCK_LIMIT = 50  # blocks in one message
ELLIPSIS = "…"

SEVERITY_ICONS = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}

DEFAULT_TEMPLATE = "{mention}{icon} *{rule}* ({severity}) on call `{call_id}`\n>{speaker}: {highlighted}"

#: Every placeholder a template may use, and what it holds.
PLACEHOLDERS = {
    "mention": "the route's mention (e.g. <!here>) followed by a space, when the severity asks for it",
    "icon": "an emoji for the severity",
    "rule": "the rule (or detector) that fired",
    "severity": "info, warning or critical",
    "call_id": "the call id",
    "speaker": "caller or agent",
    "text": "the whole turn as transcribed",
    "matched": "the phrase or pattern of the rule that matched",
    "match": "the words of the turn that matched",
    "highlighted": "the turn with the matched words in bold",
    "type": "trigger.<type> or the event type",
    "event_type": "the type of the event that fired it (or absent)",
    "event_id": "the id of that event",
    "timestamp": "when it was said (ISO 8601 UTC)",
    "labels": "the labels as key=value, comma-separated",
    "source": "the plugin that emitted the trigger",
}


def escape(value: Any) -> str:
    """mrkdwn escaping for text that is not ours."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot be rendered (an unknown placeholder, bad braces), or None."""
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        return f"not a valid template ({exc}); write {{{{ and }}}} for literal braces"
    for name in names:
        if name not in PLACEHOLDERS:
            return f"unknown placeholder {{{name}}} (known: {', '.join(sorted(PLACEHOLDERS))})"
    return None


def _speaker(value: str | None) -> str:
    return {"user": "caller", "agent": "agent"}.get(value or "", value or "")


def trigger_fields(trigger: Trigger) -> dict[str, str]:
    """The placeholders' values for a trigger, escaped. Works with any Trigger; keyword triggers add text/span."""
    data = trigger.data or {}
    text = getattr(trigger, "text", None) or data.get("text") or ""
    span = getattr(trigger, "span", None) or data.get("span")
    matched = getattr(trigger, "matched", None) or data.get("matched") or ""
    speaker = getattr(trigger, "speaker", None) or data.get("speaker")
    if text and span and 0 <= span[0] < span[1] <= len(text):
        start, end = span
        match = text[start:end]
        highlighted = f"{escape(text[:start])}*{escape(match)}*{escape(text[end:])}"
    else:
        match = ""
        highlighted = escape(text) if text else f"_not said: {escape(matched)}_" if trigger.event_type == "absent" else ""
    return {
        "rule": escape(trigger.rule),
        "severity": escape(trigger.severity),
        "icon": SEVERITY_ICONS.get(trigger.severity, ""),
        "call_id": escape(trigger.call_id),
        "speaker": escape(_speaker(speaker)),
        "text": escape(text),
        "matched": escape(matched),
        "match": escape(match),
        "highlighted": highlighted,
        "type": escape(trigger.full_type),
        "event_type": escape(trigger.event_type or ""),
        "event_id": escape(trigger.event_id or ""),
        "timestamp": (trigger.timestamp or trigger.detected_at).isoformat().replace("+00:00", "Z"),
        "labels": escape(", ".join(f"{key}={value}" for key, value in sorted(trigger.labels.items()))),
        "source": escape(trigger.source or ""),
    }


def event_fields(event: Event) -> dict[str, str]:
    """The placeholders' values for a plain event (routes whose ``events`` name event types)."""
    text = getattr(event, "text", "") or ""
    speaker = "agent" if event.event_type == "tts_completed" else "user" if "transcription" in event.event_type else ""
    fields = {name: "" for name in PLACEHOLDERS}
    fields.update(
        {
            "rule": escape(event.event_type),
            "severity": "info",
            "icon": SEVERITY_ICONS["info"],
            "call_id": escape(event.call_id),
            "speaker": escape(_speaker(speaker)),
            "text": escape(text),
            "highlighted": escape(text),
            "type": escape(event.event_type),
            "event_type": escape(event.event_type),
            "event_id": escape(event.event_id or ""),
            "timestamp": event.timestamp.isoformat().replace("+00:00", "Z"),
        }
    )
    return fields


def render(template: str, fields: dict[str, str], mention: str = "") -> str:
    return template.format_map({**fields, "mention": f"{mention} " if mention else ""})


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def message_payload(texts: list[str]) -> dict[str, Any]:
    """One Slack message for one or more rendered texts (grouped triggers): a section block each, within Slack's
    limits (at most 50 blocks, 3,000 characters a section), and the plain-text fallback."""
    shown = texts if len(texts) <= BLOCK_LIMIT else texts[: BLOCK_LIMIT - 1]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": truncate(text, SECTION_TEXT_LIMIT)}} for text in shown
    ]
    if len(texts) > len(shown):
        more = len(texts) - len(shown)
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"… and {more} more"}]})
    fallback = texts[0] if len(texts) == 1 else f"{len(texts)} alerts:\n" + "\n".join(texts)
    return {"text": truncate(fallback, TEXT_LIMIT), "blocks": blocks}
