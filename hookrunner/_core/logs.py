"""Log output for people (text) and for log collectors (one JSON object per line).

Secrets never reach a log line: the API key is only ever put in request headers, and httpx's own request logging
(which would print URLs with query strings) is kept at WARNING. Libraries still build exception texts that quote
what they were given (httpx's "Illegal header value b'Bearer ...'"), so every secret the runner or a plugin holds
is registered with ``redact_in_logs`` and replaced by ``[redacted]`` in every formatted line, traceback included.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

from hookrunner._core.text import encodable

LEVELS = ("debug", "info", "warning", "error")
REDACTED = "[redacted]"
#: Secrets shorter than this are not searched for: they would blank out ordinary words, and no key is this short.
MIN_SECRET_LENGTH = 6
_secrets: set[str] = set()


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


class JsonFormatter(_Redacting):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redacted(record.getMessage()),
        }
        if record.exc_info:
            entry["traceback"] = redacted(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send hookrunner's log lines to stderr (stdout belongs to plugins such as the console transcript)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_Redacting("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "hypercorn.access", "hypercorn.error", "hookrunner.simulator.server"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
