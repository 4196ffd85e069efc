"""The trigger ``hookrunner check --route TRIGGER.json`` routes: a JSON object of ``Trigger``'s fields.

Only what routing reads has to be given: a missing ``type`` is ``keyword`` (what the bundled detector emits), a
missing ``call_id`` a made-up one, a missing ``rule`` ``route-test`` (``null`` is the same as leaving a field out). A mistake is one line per field, in the
config's wording (``TRIGGER.json: severity: expected one of ...``), and an unknown field is refused with the
nearest name: a misspelt ``severty`` silently ignored would make the answer wrong.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hookrunner._core.callids import call_id_problem
from hookrunner._core.errors import UsageError
from hookrunner._core.settings import Setting, check_table, describe, key_text, one_of
from hookrunner._core.triggers import SEVERITIES, Trigger

__all__ = ["read_trigger", "TRIGGER_FIELDS"]

#: A trigger is a few hundred bytes; a file this big is not one.
MAX_BYTES = 1024 * 1024
DEFAULT_CALL_ID = "CALL-ROUTE-TEST"


def _trigger_type(value: str) -> str | None:
    if value.removeprefix("trigger.").strip():
        return None
    return f"expected a trigger type (like keyword, or trigger.keyword), got {describe(value)}"


def _time(value: str) -> str | None:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return f"expected an ISO-8601 time (like 2025-05-01T09:30:00Z), got {describe(value)}"
    return None


def _strings(value: dict[str, Any]) -> str | None:
    for key, item in value.items():
        if not isinstance(item, str):
            return f"expected an object of strings, got {_json_kind(item)} for {key_text(key)}"
    return None


TRIGGER_FIELDS = {
    "type": Setting("str", "keyword", check=_trigger_type),  # notifiers see trigger.TYPE; that spelling works too
    "call_id": Setting("str", DEFAULT_CALL_ID, check=call_id_problem),
    "rule": Setting("str", "route-test"),
    "severity": Setting("str", "info", check=one_of(*SEVERITIES)),
    "labels": Setting("table", {}, expected="an object of strings", check=_strings),
    "event_id": Setting("str", None),
    "event_type": Setting("str", None),
    "timestamp": Setting("str", None, check=_time),
    "detected_at": Setting("str", None, check=_time),
    "data": Setting("table", {}, expected="an object"),
    "source": Setting("str", None),  # the plugin that emitted it
}


def read_trigger(name: str) -> Trigger:
    """The trigger in file ``name`` (``-``: standard input); a UsageError of one line per problem otherwise."""
    where = "<stdin>" if name == "-" else name
    try:
        if name == "-":
            raw = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with Path(name).open("rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file (write the trigger as a JSON object, or pass - for stdin)") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_BYTES:
        raise UsageError(f"{where}: more than 1 MiB: not a trigger (a JSON object of its fields)")
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: not UTF-8 text (byte {exc.start + 1})") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise UsageError(f"{where}: not usable JSON: nested too deeply") from None
    return trigger_from(data, where)


def trigger_from(data: Any, where: str) -> Trigger:
    """A ``Trigger`` from a decoded JSON value, with the defaults above for what routing does not need."""
    if not isinstance(data, dict):
        raise UsageError(
            f"{where}: expected a JSON object of a trigger's fields ({', '.join(TRIGGER_FIELDS)}), got {_json_kind(data)}"
        )
    values, problems = check_table({key: value for key, value in data.items() if value is not None}, TRIGGER_FIELDS)
    if problems:
        raise UsageError("\n".join(f"{where}: {_json_words(problem)}" for problem in problems))
    return Trigger(
        type=values["type"].removeprefix("trigger."),
        call_id=values["call_id"],
        rule=values["rule"],
        severity=values["severity"],
        labels=values["labels"],
        event_id=values["event_id"],
        event_type=values["event_type"],
        timestamp=_utc(values["timestamp"]),
        detected_at=_utc(values["detected_at"]) or datetime.now(timezone.utc),
        data=values["data"],
        source=values["source"],
    )


def _utc(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _json_kind(value: Any) -> str:
    """A found value as JSON names it (``describe`` speaks TOML: tables, lists, true)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "null" if value is None else describe(value)


def _json_words(problem: str) -> str:
    return problem.replace(", got a table", ", got an object").replace(", got a list", ", got an array")
