"""What a call id may be, checked wherever one comes in (config, ``--call``, ``POST /calls``, pushes, listings).

A call id goes into a URL, a log line, a metrics-free dict key and every message about the call, so one that is
70,000 characters long or holds a newline must be refused where it arrives, as that one input's problem, not
found later as a crash of the whole runner (``httpx.InvalidURL``). Atoms' ids look like
``CALL-1764000000456-0789ab``; the rule below admits every opaque id shape (UUIDs, database ids) with room to
spare, and nothing that needs escaping.
"""

from __future__ import annotations

import re

from hookrunner._core.text import shown

__all__ = ["MAX_CALL_ID_LENGTH", "call_id_problem"]

#: The longest call id accepted (Atoms' are about 30 characters).
MAX_CALL_ID_LENGTH = 128
_CALL_ID = re.compile(r"[A-Za-z0-9._~:-]+")


def call_id_problem(value: object) -> str | None:
    """Why ``value`` is not a call id (one line, quoting a cut and escaped part of it), or None when it is one."""
    if not isinstance(value, str):
        return f"expected a call id (a string), got {type(value).__name__}"
    if not value:
        return "expected a call id, got an empty string"
    if len(value) > MAX_CALL_ID_LENGTH:
        return f"expected a call id of at most {MAX_CALL_ID_LENGTH} characters, got {len(value)}: {shown(value)}"
    if not _CALL_ID.fullmatch(value):
        return f"expected a call id of letters, digits and . _ ~ : - only, got {shown(value)}"
    return None

