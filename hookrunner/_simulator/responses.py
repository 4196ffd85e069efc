"""The simulator's JSON answers, shared by its routes: error bodies in Atoms' shapes, and ISO 8601 times."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any

import msgspec

from hookrunner._core.asgi import errors, send_body, send_json

__all__ = ["Answer", "errors", "error_answer", "send_json", "send_body", "iso", "encode", "encode_lenient"]

#: (status, JSON body, extra headers) as a route decides it, before anything is sent.
Answer = tuple[int, Any, list[tuple[bytes, bytes]]]

encode = msgspec.json.Encoder().encode


def encode_lenient(value: Any) -> bytes:
    """Compact JSON like ``encode``; a string with a lone surrogate (which UTF-8 cannot carry, and captured streams
    have: text cut inside an emoji) goes out as its ``\\ud83d`` escape instead of failing."""
    try:
        return encode(value)
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode()


def error_answer(status: int, retry_after: float | None) -> Answer:
    """A simulated failure: 429 in the rate-limit shape Atoms documents, anything else in the usual error shape;
    ``Retry-After`` whenever ``retry_after`` is given."""
    headers = []
    if retry_after is not None:
        headers.append((b"retry-after", f"{retry_after:g}".encode()))
    if status == 429:
        body = {"status": False, "error": "Too many requests (simulated)", "code": 429, "retry_after": retry_after}
    else:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        body = errors(f"{phrase} (simulated)")
    return status, body, headers


def iso(epoch_ms: int) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``, from integer milliseconds (no float truncation surprises)."""
    moment = datetime.fromtimestamp(epoch_ms // 1000, timezone.utc) + timedelta(milliseconds=epoch_ms % 1000)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
