"""Text every sink can write: no lone surrogates in data, no line breaks or runaway lengths in log lines.

JSON may carry a lone surrogate escape (``"\\ud83d"``: text cut inside an emoji); Python's json reads it, but no
UTF-8 writer (a webhook body, Slack, the dead-letter file, the spool, a log line) can encode it. Such text is made
encodable once, when it comes in, so a single event can never make every later write fail. Values from outside
that a log line quotes (ids, text) are escaped and cut, so they cannot forge lines or grow logs with traffic.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["encodable", "json_bytes", "json_line", "one_line", "shown", "SHOWN_LENGTH", "count"]

_encode = msgspec.json.Encoder().encode
_encode_anything = msgspec.json.Encoder(enc_hook=repr).encode  # a value JSON cannot hold is kept as its repr

#: How much of an outside value a log line or error shows.
SHOWN_LENGTH = 80


def _encodable_str(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # a pair of surrogates becomes the character it spells; a lone one becomes U+FFFD
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def encodable(value: Any) -> Any:
    """``value`` (a JSON value: str, list, dict, number...) with every lone surrogate, in keys and values alike,
    replaced by U+FFFD; the same object when there was none."""
    if isinstance(value, str):
        return _encodable_str(value)
    if isinstance(value, dict):
        items = [(encodable(key), encodable(item)) for key, item in value.items()]
        if all(new_key is key and new_item is item for (new_key, new_item), (key, item) in zip(items, value.items())):
            return value
        return dict(items)
    if isinstance(value, list):
        items = [encodable(item) for item in value]
        return value if all(new is old for new, old in zip(items, value)) else items
    return value


def json_bytes(value: Any) -> bytes:
    """``value`` as JSON, always: text that cannot be encoded (a lone surrogate a plugin built) becomes U+FFFD
    and an object JSON has no type for becomes its repr, rather than failing the write or the delivery."""
    try:
        return _encode(value)
    except (UnicodeEncodeError, msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError):
        pass
    try:
        return _encode_anything(encodable(value))
    except RecursionError:  # nested past what any JSON reader takes (a plugin's bug): the write still happens
        return _encode({"unencodable": f"a {type(value).__name__} nested too deep for JSON"})


def json_line(value: Any) -> bytes:
    """``value`` as one line of JSON ending in a newline (``json_bytes``), for a file read back by a person or a
    tool."""
    return json_bytes(value) + b"\n"


def shown(value: object, limit: int = SHOWN_LENGTH) -> str:
    """An outside value as a log line or error may quote it: escaped (no newline or control character can end
    the line or forge another) and cut to ``limit`` characters, with the full length said when cut."""
    text = value if isinstance(value, str) else str(value)
    quoted = repr(_encodable_str(text[:limit]))
    if len(text) > limit:
        return f"{quoted}... ({len(text)} characters)"
    return quoted


def one_line(text: str, limit: int = 300) -> str:
    """A message built from outside text (an error body, an exception's text) as one log line: control characters
    escaped, cut to ``limit`` characters with "..." when longer; unquoted, unlike ``shown``."""
    cut = text[:limit]
    if not cut.isprintable():
        cut = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in _encodable_str(cut))
    return cut + "..." if len(text) > limit else cut


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 call``, ``3 calls``: a count and its noun, which a log line should get right for one too."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
