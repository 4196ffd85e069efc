"""The ``[plugins.keywords]`` table: ``[[plugins.keywords.rules]]``, checked (regexes compiled) before any call."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from hookrunner import SEVERITIES, Setting, at_least, between, check_table, one_of

log = logging.getLogger("hookrunner.plugins.keywords")

SPEAKERS = ("user", "agent", "any")
#: Beyond this many phrases a fuzzy rule gets a warning: fuzzy phrases are scored one at a time.
FUZZY_PHRASES_WARNING = 200
MATCH_MODES = ("word", "fuzzy")
#: The phrases and patterns ``check`` shows of one rule; the rest are counted.
DESCRIBED_PHRASES = 5


SETTINGS = {"rules": Setting("list[table]", [], doc="[[plugins.keywords.rules]]")}

RULE = {
    "name": Setting("str", required=True, expected="a unique name for logs, errors and triggers"),
    "phrases": Setting("list[str]", []),
    "patterns": Setting("list[str]", [], expected="a list of regular expressions"),
    "speaker": Setting("str", "user", check=one_of(*SPEAKERS)),
    "match": Setting("str", "word", check=one_of(*MATCH_MODES)),
    "threshold": Setting("number", 85.0, check=between(0, 100)),
    "interim": Setting("bool", False),
    "cooldown": Setting("number", 0.0, check=at_least(0), expected="a number of seconds"),
    "max_per_call": Setting("int", 0, check=at_least(0), expected="a count (0: no limit)"),
    "absent_within": Setting("number", None, check=at_least(0), expected="a number of seconds"),
    "severity": Setting("str", "info", check=one_of(*SEVERITIES)),
    "labels": Setting("table[str]", {}),
    "numbers": Setting("bool", False),
}
SETTINGS["rules"] = Setting("list[table]", [], doc="[[plugins.keywords.rules]], each with these keys", items=RULE)


@dataclass(frozen=True)
class Rule:
    index: int
    name: str
    phrases: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    speaker: str
    fuzzy: bool
    threshold: float
    interim: bool
    cooldown: float
    max_per_call: int
    absent_within: float | None
    severity: str
    labels: dict[str, str]
    numbers: bool

    def hears(self, speaker: str) -> bool:
        return self.speaker == "any" or self.speaker == speaker

    @property
    def description(self) -> str:
        """The rule in one line, for ``check``: what it listens for, from whom, and what it fires with."""
        said = [f'"{phrase}"' for phrase in self.phrases] + [f"/{pattern.pattern}/" for pattern in self.patterns]
        listened = ", ".join(said[:DESCRIBED_PHRASES])
        if len(said) > DESCRIBED_PHRASES:
            listened += f" and {len(said) - DESCRIBED_PHRASES} more"
        how = [f"said by {'anyone' if self.speaker == 'any' else 'the ' + ('caller' if self.speaker == 'user' else 'agent')}"]
        how.append(f"fuzzy at {self.threshold:g}" if self.fuzzy else "whole words")
        how += ["numbers as digits or words"] if self.numbers else []
        how += ["while the caller speaks"] if self.interim else []
        how += [f"cooldown {self.cooldown:g} s"] if self.cooldown else []
        how += [f"at most {self.max_per_call} a call"] if self.max_per_call else []
        what = f"NOT said within {self.absent_within:g} s: " if self.absent_within is not None else ""
        fired = f"severity {self.severity}"
        fired += f", labels {', '.join(f'{k}={v}' for k, v in sorted(self.labels.items()))}" if self.labels else ""
        return f"rule {self.name}: {what}{listened} ({'; '.join(how)}) -> trigger.keyword, {fired}"


def parse_rules(settings: dict[str, Any], *, warn: bool = True) -> tuple[list[Rule], list[str]]:
    """The rules and every problem, one ``rules[N].key: rule NAME: ...`` line each (``warn``: log warnings too)."""
    values, problems = check_table(settings, SETTINGS)
    rules: list[Rule] = []
    names: set[str] = set()
    for index, table in enumerate(values.get("rules") or []):
        where = f"rules[{index}]"
        fields, found = check_table(table, RULE, where)
        label = table.get("name") if isinstance(table.get("name"), str) else "(unnamed)"
        problems += [_name_rule(problem, label) for problem in found]
        patterns, found_in_patterns = _compile(fields.get("patterns") or [], where, label)
        problems += found_in_patterns
        if found or found_in_patterns:
            continue
        name = fields["name"]
        if name in names:
            problems.append(f"{where}.name: rule {name}: expected a unique name, got it a second time")
        names.add(name)
        if not fields["phrases"] and not fields["patterns"]:
            problems.append(f"{where}.phrases: rule {name}: expected at least one phrase or pattern")
        if warn and fields["match"] == "fuzzy" and len(fields["phrases"]) > FUZZY_PHRASES_WARNING:
            log.warning(
                "plugins.keywords.%s.phrases: rule %s: %d fuzzy phrases are scored one by one on every turn "
                "(~0.6 µs each); consider match = \"word\" for long lists",
                where,
                name,
                len(fields["phrases"]),
            )
        if fields["absent_within"] is not None and fields["interim"]:
            problems.append(f"{where}.interim: rule {name}: an absent_within rule listens to finished turns only")
        rules.append(
            Rule(
                index=index,
                name=name,
                phrases=tuple(fields["phrases"]),
                patterns=tuple(patterns),
                speaker=fields["speaker"],
                fuzzy=fields["match"] == "fuzzy",
                threshold=float(fields["threshold"]),
                interim=fields["interim"],
                cooldown=float(fields["cooldown"]),
                max_per_call=fields["max_per_call"],
                absent_within=None if fields["absent_within"] is None else float(fields["absent_within"]),
                severity=fields["severity"],
                labels=dict(fields["labels"]),
                numbers=fields["numbers"],
            )
        )
    return rules, problems


def _compile(sources: list[str], where: str, name: str) -> tuple[list[re.Pattern[str]], list[str]]:
    """Patterns compiled case-insensitively (transcripts' casing varies), and a line for each that does not."""
    patterns, problems = [], []
    for position, source in enumerate(sources):
        try:
            patterns.append(re.compile(source, re.IGNORECASE))
        except re.error as exc:
            problems.append(f"{where}.patterns[{position}]: rule {name}: not a valid regular expression ({exc})")
    return patterns, problems


def _name_rule(problem: str, name: str | None) -> str:
    """Insert ``rule NAME:`` after the key path so the line names the rule as well as the place."""
    if not name:
        return problem
    path, _, rest = problem.partition(": ")
    return f"{path}: rule {name}: {rest}"
