"""Log output for people (text) and for log collectors (one JSON object per line).

Secrets never reach a log line: the API key is only ever put in request headers, and httpx's own request logging
(which would print URLs with query strings) is kept at WARNING. Libraries still build exception texts that quote
what they were given (httpx's "Illegal header value b'Bearer ...'"), so every secret the runner or a plugin holds
is registered with ``redact_in_logs`` and replaced by ``[redacted]`` in every formatted line, traceback included.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from hookrunner._core.text import encodable

LEVELS = ("debug", "info", "warning", "error")
REDACTED = "[redacted]"
#: Secrets shorter than this are not searched for: they would blank out ordinary words, and no key is this short.
MIN_SECRET_LENGTH = 6
_secrets: set[str] = set()


#: What a record may be about, as fields a log pipeline filters on: JSON keys, and ``key=value`` in text where the
#: message does not already say the value. Set per record (``extra=log_fields(...)``) or for a whole task
#: (``bind_log_fields``: a call's task binds its ``call_id`` once, and every line of its stream and dispatch has it).
LOG_FIELDS = ("call_id", "event_id", "plugin", "hook", "endpoint", "message_id", "attempt", "status", "worker")
#: Fields shown in text even when the message holds their value ("worker=0" in a line about CALL-0).
ALWAYS_SHOWN = frozenset({"worker"})
_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("hookrunner_log_fields", default={})


def log_fields(**fields: Any) -> dict[str, Any]:
    """``extra`` for a log call: the fields that are set (None left out)."""
    return {key: value for key, value in fields.items() if value is not None}


def bind_log_fields(**fields: Any) -> None:
    """Give every later record of the current task (and of tasks it starts) these fields; a record's own win.
    A trio task runs in its own copy of the context, so a binding never leaks into another call's task."""
    _bound.set({**_bound.get(), **log_fields(**fields)})


class FieldsAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger whose every record carries ``fields`` (an outbox's plugin and endpoint), merged with the call's own
    ``extra`` (a message's id and attempt)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    bound = _bound.get()
    fields = {}
    for key in LOG_FIELDS:
        value = record.__dict__.get(key, bound.get(key))
        if value is not None:
            fields[key] = value
    return fields


def logged_at(count: int) -> bool:
    """Whether the ``count``-th occurrence of one repeating problem gets a log line: the first three, then the
    8th, 16th, 32nd...; so an outage of hours or a stream of garbage adds a few dozen lines, not one per try."""
    return count <= 3 or count & (count - 1) == 0


def redact_in_logs(secret: str | None) -> None:
    """Never show ``secret`` in a log line from now on: as given, stripped, or escaped as a repr would show it."""
    if not secret:
        return
    for form in (secret, secret.strip(), repr(secret)[1:-1], secret.encode("utf-8", "replace").hex()):
        if len(form) >= MIN_SECRET_LENGTH:
            _secrets.add(form)


def redacted(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]`` (longest first, so none shows in part),
    and encodable: a lone surrogate in a plugin's message must not make the handler fail on the whole line."""
    text = encodable(text)
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redacted(super().format(record))


class TextFormatter(_Redacting):
    """``HH:MM:SS LEVEL message``, then ``key=value`` for each field the message does not already show."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        message = record.getMessage()
        extra = [
            f"{key}={value}"
            for key, value in _record_fields(record).items()
            if key in ALWAYS_SHOWN or str(value) not in message
        ]
        if not extra:
            return line
        head, newline, rest = line.partition("\n")  # (after the message, before a traceback)
        return redacted(head + " " + " ".join(extra)) + newline + rest


class JsonFormatter(_Redacting):
    """One JSON object per line: time, level, logger, message, the record's fields, and a traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redacted(record.getMessage()),
        }
        for key, value in _record_fields(record).items():
            entry[key] = redacted(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["traceback"] = redacted(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


_format = "text"


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send hookrunner's log lines to stderr (stdout belongs to plugins such as the console transcript); Python
    warnings too, so that under ``json`` every line a collector reads is an object."""
    global _format
    _format = fmt
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    for noisy in ("httpx", "httpcore", "hypercorn.access", "hypercorn.error", "hookrunner.simulator.server"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def command_line(text: str, *, level: str = "error", prefix: str = "error: ") -> None:
    """A line a command writes to stderr for its user (why it exits, a dead letter it kept): ``prefix`` and the
    text, or under ``--log-format json`` one object like every log record, so a collector loses none of them."""
    if _format == "json":  # the same object as every log record (not through logging: --log-level must not hide it)
        record = logging.LogRecord("hookrunner.cli", logging.getLevelName(level.upper()), "", 0, text, None, None)
        print(JsonFormatter().format(record), file=sys.stderr, flush=True)
    else:
        print(prefix + redacted(text), file=sys.stderr, flush=True)
