"""Declarative checking of TOML tables, shared by the core config and by plugins' ``validate_settings``.

One checker for everything means every error, the core's or a plugin's, reads the same way:
``key.path: expected ..., got ...`` and ``key.path: unknown key (did you mean "..."?)``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Setting",
    "check_table",
    "describe",
    "suggest",
    "at_least",
    "between",
    "one_of",
    "POSITIVE",
    "NON_NEGATIVE",
]


def describe(value: Any) -> str:
    """How a found value is shown in an error: its TOML spelling, shortened."""
    if isinstance(value, str):
        text = f'"{value}"'
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "a list"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Setting:
    """One key of a table: what it accepts, whether it must be given, and its default.

    ``kind`` is one of ``str``, ``bool``, ``int``, ``number`` (int or float), ``list[str]``, ``str|list[str]``,
    ``table``, ``table[str]`` (a table of string values) and ``list[table]`` (an array of tables);
    ``check`` may add a constraint: it returns an error text ("expected ...") or None.
    """

    kind: str
    default: Any = None
    required: bool = False
    expected: str | None = None
    check: Callable[[Any], str | None] | None = None
    doc: str = ""
    #: For ``list[table]``: the keys of each table (shown by ``hookrunner plugins --settings``).
    items: Mapping[str, Setting] | None = None

    def problem(self, value: Any) -> str | None:
        if value is None and self.default is None and not self.required:
            return None  # an optional key left unset (TOML has no null: only a filled-in default is None)
        ok = {
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
            "list[str]": isinstance(value, list) and all(isinstance(item, str) for item in value),
            "str|list[str]": isinstance(value, str)
            or (isinstance(value, list) and all(isinstance(item, str) for item in value)),
            "table": isinstance(value, dict),
            "table[str]": isinstance(value, dict) and all(isinstance(item, str) for item in value.values()),
            "list[table]": isinstance(value, list) and all(isinstance(item, dict) for item in value),
        }[self.kind]
        if not ok:
            return f"expected {self.expected or _KIND_WORDS[self.kind]}, got {describe(value)}"
        return self.check(value) if self.check else None


_KIND_WORDS = {
    "str": "a string",
    "bool": "true or false",
    "int": "an integer",
    "number": "a number",
    "list[str]": "a list of strings",
    "str|list[str]": "a string or a list of strings",
    "table": "a table",
    "table[str]": "a table of strings",
    "list[table]": "a list of tables ([[...]])",
}


def _positive(value: float) -> str | None:
    return None if value > 0 else f"expected a number greater than 0, got {describe(value)}"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else f"expected a number of 0 or more, got {describe(value)}"


POSITIVE = _positive
NON_NEGATIVE = _non_negative


def at_least(low: float) -> Callable[[float], str | None]:
    """A ``check`` for numbers of ``low`` or more."""

    def check(value: float) -> str | None:
        return None if value >= low else f"expected {low:g} or more, got {describe(value)}"

    return check


def between(low: float, high: float) -> Callable[[float], str | None]:
    """A ``check`` for numbers from ``low`` to ``high``."""

    def check(value: float) -> str | None:
        return None if low <= value <= high else f"expected a number from {low:g} to {high:g}, got {describe(value)}"

    return check


def one_of(*choices: str) -> Callable[[str], str | None]:
    """A ``check`` for strings that must be one of ``choices``."""

    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"expected one of {', '.join(describe(choice) for choice in choices)}, got {describe(value)}"

    return check


def check_table(
    table: Mapping[str, Any], schema: Mapping[str, Setting], path: str = "", *, open_keys: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """Check ``table`` against ``schema``; return the table with defaults filled in, and the problems found.

    Each problem is one line starting with the dotted key path (prefixed by ``path``). Unknown keys are
    problems, with the nearest known name suggested, unless ``open_keys`` is set.
    """
    prefix = f"{path}." if path else ""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in table.items():
        setting = schema.get(key)
        if setting is None:
            if not open_keys:
                problems.append(f"{prefix}{key}: unknown key{suggest(key, schema)}")
            continue
        problem = setting.problem(value)
        if problem:
            problems.append(f"{prefix}{key}: {problem}")
        else:
            values[key] = value
    for key, setting in schema.items():
        if key in table:
            continue
        if setting.required:
            problems.append(f"{prefix}{key}: missing required key ({setting.expected or _KIND_WORDS[setting.kind]})")
        else:
            values[key] = setting.default
    return values, problems


def suggest(word: str, choices: Mapping[str, Any] | list[str]) -> str:
    """`` (did you mean "x"?)`` for the nearest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
