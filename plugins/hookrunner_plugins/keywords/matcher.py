"""Finding every rule's phrases and patterns in one turn of text.

Word phrases of all rules go into one Aho-Corasick automaton (pyahocorasick), built once at start, so scanning a
turn costs about the same for ten phrases as for ten thousand; each hit is kept only if it starts and ends on word
boundaries. Fuzzy phrases are scored with rapidfuzz's ``partial_ratio`` (a phrase inside a longer turn), one phrase
at a time, so they suit short lists. Regular expressions run on the original text, case-insensitively.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Set as AbstractSet
from dataclasses import dataclass

import ahocorasick
from rapidfuzz import fuzz

from .normalize import Normalized, normalize, normalize_phrase

__all__ = ["Match", "PhraseMatcher", "RuleMatchSpec"]


@dataclass(frozen=True)
class RuleMatchSpec:
    """What one rule looks for; ``index`` identifies the rule in results."""

    index: int
    phrases: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    fuzzy: bool
    threshold: float
    numbers: bool


@dataclass(frozen=True)
class Match:
    rule: int
    matched: str  # the phrase as written in the rule, or the pattern's source
    start: int  # span in the original text
    end: int
    score: float = 100.0


class PhraseMatcher:
    """All rules' matching, compiled once."""

    def __init__(self, rules: Iterable[RuleMatchSpec]) -> None:
        self._rules = list(rules)
        # One automaton per normal form: plain, and numbers-as-digits for rules that ask for it.
        self._automata: dict[bool, ahocorasick.Automaton] = {}
        self._fuzzy: list[tuple[int, str, str, bool]] = []  # (rule, phrase, normalised phrase, numbers)
        self._patterns: list[tuple[int, re.Pattern[str]]] = []
        entries: dict[bool, dict[str, list[tuple[int, str]]]] = {False: {}, True: {}}
        for rule in self._rules:
            for phrase in rule.phrases:
                key = normalize_phrase(phrase, numbers=rule.numbers)
                if not key:
                    continue
                if rule.fuzzy:
                    self._fuzzy.append((rule.index, phrase, key, rule.numbers))
                else:
                    entries[rule.numbers].setdefault(key, []).append((rule.index, phrase))
            self._patterns += [(rule.index, pattern) for pattern in rule.patterns]
        for numbers, words in entries.items():
            if not words:
                continue
            automaton = ahocorasick.Automaton()
            for key, owners in words.items():
                automaton.add_word(key, (len(key), tuple(owners)))
            automaton.make_automaton()
            self._automata[numbers] = automaton
        self._thresholds = {rule.index: rule.threshold for rule in self._rules}
        self.phrase_count = sum(len(rule.phrases) for rule in self._rules)

    def find(self, text: str, rules: AbstractSet[int] | None = None) -> list[Match]:
        """Matches in ``text`` of the rules in ``rules`` (all when None), the earliest first per rule."""
        forms: dict[bool, Normalized] = {}

        def form(numbers: bool) -> Normalized:
            if numbers not in forms:
                forms[numbers] = normalize(text, numbers=numbers)
            return forms[numbers]

        found: dict[int, Match] = {}
        for numbers, automaton in self._automata.items():
            normalized = form(numbers)
            for match in self._scan(automaton, normalized, rules):
                if match.rule not in found or match.start < found[match.rule].start:
                    found[match.rule] = match
        for rule, phrase, key, numbers in self._fuzzy:
            if (rules is not None and rule not in rules) or rule in found:
                continue
            normalized = form(numbers)
            fuzzy = self._fuzzy_match(rule, phrase, key, normalized)
            if fuzzy is not None:
                found[rule] = fuzzy
        for rule, pattern in self._patterns:
            if (rules is not None and rule not in rules) or rule in found:
                continue
            hit = pattern.search(text)
            if hit:
                found[rule] = Match(rule, pattern.pattern, hit.start(), hit.end())
        return sorted(found.values(), key=lambda match: (match.start, match.rule))

    def _fuzzy_match(self, rule: int, phrase: str, key: str, normalized: Normalized) -> Match | None:
        """The phrase somewhere in a longer turn (``partial_ratio`` finds where, ``ratio`` over those whole words
        decides); a turn shorter than the phrase must match it whole, otherwise "speak", a fragment, would be a
        perfect partial match of "speak to a manager"."""
        text = normalized.text
        cutoff = self._thresholds[rule]
        if len(text) >= len(key):
            alignment = fuzz.partial_ratio_alignment(key, text, score_cutoff=cutoff)
            if alignment is None or alignment.score < cutoff:
                return None
            # Whole words only, as in word mode: widen the hit to the words it touches and score those, so
            # "cancel" does not match inside "cancellation" nor "fraud" inside "defrauded".
            start = text.rfind(" ", 0, alignment.dest_start) + 1
            end = text.find(" ", max(alignment.dest_end - 1, alignment.dest_start))
            end = len(text) if end == -1 else end
            score = fuzz.ratio(key, text[start:end], score_cutoff=cutoff)
            if not score:
                return None
        else:
            score = fuzz.ratio(key, text, score_cutoff=cutoff)
            if not score:
                return None
            start, end = 0, len(text)
        original_start, original_end = normalized.original_span(start, end)
        return Match(rule, phrase, original_start, original_end, score)

    @staticmethod
    def _scan(automaton: ahocorasick.Automaton, normalized: Normalized, rules: AbstractSet[int] | None) -> Iterator[Match]:
        text = normalized.text
        for end_index, (length, owners) in automaton.iter(text):
            start = end_index - length + 1
            end = end_index + 1
            if (start > 0 and text[start - 1] != " ") or (end < len(text) and text[end] != " "):
                continue  # inside a word: "cancel" in "cancellation"
            original_start, original_end = normalized.original_span(start, end)
            for rule, phrase in owners:
                if rules is None or rule in rules:
                    yield Match(rule, phrase, original_start, original_end)
