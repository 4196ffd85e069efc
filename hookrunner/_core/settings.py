"""Declarative checking of TOML tables, shared by the core config and by plugins' ``validate_settings``.

One checker for everything means every error, the core's or a plugin's, reads the same way:
``key.path: expected ..., got ...`` and ``key.path: unknown key (did you mean "..."?)``.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = [
    "Setting",
    "check_table",
    "describe",
    "key_text",
    "suggest",
    "at_least",
    "between",
    "one_of",
    "http_url",
    "url_problem",
    "secret_problem",
    "POSITIVE",
    "NON_NEGATIVE",
]

#: How many characters of a found value (or a key) an error shows.
SHOWN = 60
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escaped(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch.isprintable():
        return ch
    return f"\\u{ord(ch):04X}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08X}"


def _quoted(text: str) -> str:
    """``text`` as a TOML basic string, every character that is not printable escaped: an error stays one line."""
    return '"' + "".join(_escaped(ch) for ch in text[: SHOWN * 2]) + '"'


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def describe(value: Any) -> str:
    """How a found value is shown in an error: its TOML spelling, escaped and shortened (always one line)."""
    if isinstance(value, str):
        text = _quoted(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "a list"
    elif isinstance(value, int) and value.bit_length() > 190:  # beyond 57 digits, and str() refuses 4,300
        text = f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    else:
        text = repr(value)
    return _cut(text)


def key_text(key: str) -> str:
    """A key as a key path shows it: bare when TOML allows, else quoted and escaped (``plugins."my plugin"``)."""
    return key if _BARE_KEY.fullmatch(key) else _cut(_quoted(key))


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float's range
        return False


@dataclass(frozen=True)
class Setting:
    """One key of a table: what it accepts, whether it must be given, and its default.

    ``kind`` is one of ``str``, ``bool``, ``int``, ``number`` (int or float), ``int|str``, ``list[str]``, ``str|list[str]``,
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
            "number": _finite_number(value),
            "list[str]": isinstance(value, list) and all(isinstance(item, str) for item in value),
            "int|str": (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str),
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
    "int|str": "an integer or a string",
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


def url_problem(value: str) -> str | None:
    """Why ``value`` is not an http(s) URL hookrunner can connect to, without quoting it (the URL may be a
    secret, like a Slack webhook's), or None when it is one."""
    expected = "expected an http:// or https:// URL"
    for position, ch in enumerate(value):
        if ch.isspace() or not ch.isprintable():
            return f"{expected} without spaces or control characters (character {position + 1} is one)"
    try:
        url = httpx.URL(value)
        scheme, host, port = url.scheme, url.host, url.port
    except (httpx.InvalidURL, ValueError, UnicodeError):
        return f"{expected} (it cannot be parsed)"
    if scheme not in ("http", "https") or not value.lower().startswith(f"{scheme}://"):
        return expected
    if not host or "%" in host:
        return f"{expected} with a host"
    if port is not None and not 1 <= port <= 65535:
        return f"{expected} with a port from 1 to 65535"
    return None


def http_url(value: str) -> str | None:
    """A ``check`` for http:// and https:// URLs: parsed (by httpx, which will connect to it), with a host and a
    port from 1 to 65535, and no space or control character."""
    problem = url_problem(value)
    return f"{problem}, got {describe(value)}" if problem else None


def secret_problem(value: str) -> str | None:
    """What is wrong with a secret (an API key, a token), never quoting it: the rest of a sentence like "the
    value of VAR ...", or None when it looks usable (no surrounding whitespace, printable ASCII only)."""
    if value != value.strip():
        if value[-1:].isspace():
            return "ends with whitespace (a newline from a file?); strip it"
        return "starts with whitespace; strip it"
    for position, ch in enumerate(value, 1):
        if not " " <= ch <= "~":
            return f"holds a character that is not printable ASCII (character {position}); check how it was copied"
    return None


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
    problems, with the nearest known name suggested, unless ``open_keys`` is set. A key that is missing or whose
    value has a problem holds its default in the returned table (None for a required key), so a caller's further
    checks can read every key whatever was wrong.
    """
    prefix = f"{path}." if path else ""
    values: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in table.items():
        setting = schema.get(key)
        if setting is None:
            if not open_keys:
                problems.append(f"{prefix}{key_text(key)}: unknown key{suggest(key, schema)}")
            continue
        problem = setting.problem(value)
        if problem:
            problems.append(f"{prefix}{key}: {problem}")
            # the default stands in, so the checks that read this key still run and report everything at once
            values[key] = copy.deepcopy(setting.default)
        else:
            values[key] = value
    for key, setting in schema.items():
        if key in table:
            continue
        if setting.required:
            problems.append(f"{prefix}{key}: missing required key ({setting.expected or _KIND_WORDS[setting.kind]})")
        values[key] = copy.deepcopy(setting.default)
    return values, problems


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean "x"?)`` for the nearest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
