"""What an Atoms error answer says: its message, and whether asking again later may succeed.

Every Atoms endpoint answers errors the same way (``{"status": false, "errors": ["..."]}``); the stream, the
listing and the backfill read them here so that a log line says what Atoms said, whichever asked.
"""

from __future__ import annotations

import math

import httpx

from hookrunner._core.text import one_line

#: Statuses after which the same request may succeed if asked again later (the others are answers).
RETRYABLE_STATUSES = frozenset({408, 425, 429})


def error_body(response: httpx.Response) -> tuple[str, float | None]:
    """The message of an Atoms error body (``{"status": false, "errors": ["..."]}``, or ``error``/``message``) and,
    for a 429, the ``retry_after`` seconds the body may carry when the header is missing."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return response.reason_phrase or "no message", None
    message = response.reason_phrase or "no message"
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        message = one_line(str(errors[0]), 200)
    else:
        for key in ("error", "message"):
            if isinstance(body.get(key), str):
                message = one_line(body[key], 200)
                break
    retry_after = body.get("retry_after")
    if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) or not math.isfinite(retry_after):
        retry_after = None
    return message, None if retry_after is None else max(0.0, float(retry_after))
