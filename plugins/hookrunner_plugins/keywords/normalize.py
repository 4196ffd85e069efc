"""Normalising transcript text for matching, while remembering where each piece came from.

Speech-to-text output differs in casing, punctuation, Unicode forms and (between vendors, and between interim and
final transcripts) in whether numbers are words or digits. Rules and transcripts are both brought to one form:
NFKC, casefolded, punctuation removed, whitespace collapsed, and, for rules that ask for it, numbers as digits
(``text2num``). Every character of the normalised text keeps the span of the original text it came from, so a
match can be reported as a span of what was actually said.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass

from text_to_num import alpha2digit

__all__ = ["Normalized", "normalize", "normalize_phrase"]

_JOINERS = {"'", "’", "ʼ", "`"}  # inside a word: "don't" and "dont" are the same word
#: With ``numbers``, an amount written with a sign matches the amount said aloud ("$900" / "nine hundred dollars").
CURRENCIES = {"$": "dollars", "€": "euros", "£": "pounds", "¥": "yen", "₹": "rupees"}


@dataclass(frozen=True)
class Normalized:
    """``text``: normalised tokens joined by single spaces; ``tokens``: each token's (start, end) in ``text``
    and its (start, end) in the original."""

    text: str
    tokens: tuple[tuple[int, int, int, int], ...]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original text's span covering normalised ``text[start:end]``."""
        covered = [
            (original_start, original_end)
            for token_start, token_end, original_start, original_end in self.tokens
            if token_end > start and token_start < end
        ]
        if not covered:
            return (0, 0)
        # min/max, not first/last: a token may come from before its neighbour ("$900" is "900 dollars")
        return (min(span[0] for span in covered), max(span[1] for span in covered))


def _clusters(original: str) -> list[tuple[int, int]]:
    """Spans of a base character with the combining marks after it: NFKC must see them together ("e" + U+0301
    is "é"), and a match may not end between a letter and its accent."""
    spans: list[tuple[int, int]] = []
    for index, char in enumerate(original):
        if spans and unicodedata.combining(char):
            spans[-1] = (spans[-1][0], index + 1)
        else:
            spans.append((index, index + 1))
    return spans


_ASCII_WORD = re.compile(r"[a-z0-9]+(?:['`][a-z0-9]+)*|(\$)", re.IGNORECASE)


def _ascii_tokens(original: str, currency: bool) -> list[tuple[str, int, int]]:
    """``_tokens`` for plain ASCII text (most transcripts), with one regular expression instead of a loop."""
    tokens = []
    for match in _ASCII_WORD.finditer(original):
        if match.group(1):
            if currency:
                tokens.append(("$", match.start(), match.end()))
            continue
        word = match.group().lower().replace("'", "").replace("`", "")
        tokens.append((word, match.start(), match.end()))
    return tokens


def _tokens(original: str, currency: bool = False) -> list[tuple[str, int, int]]:
    """Words of ``original`` (normalised) with their original spans; punctuation and spaces separate words.
    With ``currency``, currency signs are kept as tokens of their own (for ``_amounts``)."""
    if original.isascii():
        return _ascii_tokens(original, currency)
    tokens: list[tuple[str, int, int]] = []
    word: list[str] = []
    start = end = 0
    for cluster_start, cluster_end in _clusters(original):
        cluster = original[cluster_start:cluster_end]
        piece = unicodedata.normalize("NFKC", cluster).casefold()
        if cluster in _JOINERS and word:
            continue  # dropped, and not part of the span unless a letter follows
        if piece and all(unicodedata.category(c)[0] in "LNM" for c in piece):
            if not word:
                start = cluster_start
            word.append(piece)
            end = cluster_end
            continue
        if word:
            tokens.append(("".join(word), start, end))
            word = []
        if currency and cluster in CURRENCIES:
            tokens.append((cluster, cluster_start, cluster_end))
    if word:
        tokens.append(("".join(word), start, end))
    return tokens


def _amounts(tokens: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """``$ 900`` is said "nine hundred dollars": a sign before a number becomes its word after it."""
    result: list[tuple[str, int, int]] = []
    index = 0
    while index < len(tokens):
        word, start, end = tokens[index]
        if word in CURRENCIES:
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is not None and following[0][:1].isdigit():
                result += [following, (CURRENCIES[word], start, end)]
                index += 2
                continue
            index += 1  # a sign on its own is punctuation
            continue
        result.append(tokens[index])
        index += 1
    return result


def _digit_runs(tokens: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Numbers read out digit by digit ("four two one seven" -> "4 2 1 7") are one number: "4217"."""
    result: list[tuple[str, int, int, bool]] = []  # (..., whether it is digits read out one by one)
    for token in tokens:
        word = token[0]
        if len(word) == 1 and word.isdigit() and result and result[-1][0].isdigit() and result[-1][3]:
            previous = result.pop()
            result.append((previous[0] + word, previous[1], token[2], True))
        else:
            result.append((*token, len(word) == 1 and word.isdigit()))
    return [(word, start, end) for word, start, end, _ in result]


def _numbers_as_digits(tokens: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Spelled numbers become digits ("nine hundred" -> "900"); aligned back onto the words they replaced."""
    words = [word for word, _, _ in tokens]
    converted = alpha2digit(" ".join(words), "en", threshold=0).split()
    if converted == words:
        return _digit_runs(tokens)
    result: list[tuple[str, int, int]] = []
    matcher = difflib.SequenceMatcher(a=words, b=converted, autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            result.extend(tokens[a0:a1])
        elif b1 > b0:
            span_start = tokens[a0][1] if a1 > a0 else (tokens[a0 - 1][2] if a0 else 0)
            span_end = tokens[a1 - 1][2] if a1 > a0 else span_start
            result.extend((word, span_start, span_end) for word in converted[b0:b1])
    return _digit_runs(result)


def normalize(original: str, *, numbers: bool = False) -> Normalized:
    tokens = _tokens(original, currency=numbers)
    if numbers and tokens:
        tokens = _numbers_as_digits(_amounts(tokens))
    parts: list[str] = []
    spans: list[tuple[int, int, int, int]] = []
    position = 0
    for word, original_start, original_end in tokens:
        spans.append((position, position + len(word), original_start, original_end))
        parts.append(word)
        position += len(word) + 1
    return Normalized(" ".join(parts), tuple(spans))


def normalize_phrase(phrase: str, *, numbers: bool = False) -> str:
    """A rule's phrase in the same form as the text it is matched against."""
    return normalize(phrase, numbers=numbers).text
