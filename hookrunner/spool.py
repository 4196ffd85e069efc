"""Where received events go when they could not be dispatched in time: a JSONL file the simulator can replay.

An event that was received must be dispatched or written somewhere a user can get it back from. At shutdown, once
``runner.shutdown_grace`` has run out, the events still buffered (and the one being dispatched) are appended here
exactly as Atoms sent them (with ``call_id`` added where it was missing), one JSON object a line: ``hookrunner simulate FILE`` serves them again, so the plugins
can be run on them with ``hookrunner run``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import msgspec

from .events import Event

log = logging.getLogger("hookrunner.spool")


def _replayable(raw: dict, call_id: str) -> dict:
    """The event as received, with the call id added where Atoms left it out (lifecycle events may)."""
    return raw if "call_id" in raw else {**raw, "call_id": call_id}


def spool_events(path: Path, call_id: str, events: Iterable[Event]) -> int:
    """Append ``events`` to ``path``; return how many were written (0 and an error line if the file failed)."""
    lines = [msgspec.json.encode(_replayable(event.raw, call_id)) + b"\n" for event in events]
    if not lines:
        return 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as handle:
            handle.writelines(lines)
    except OSError as exc:
        log.error(
            "%s: %d received events were not dispatched, and writing them to %s failed (%s)",
            call_id,
            len(lines),
            path,
            exc.strerror,
        )
        return 0
    log.error(
        "%s: %d received events were not dispatched before runner.shutdown_grace ran out; written to %s "
        "(replay them with `hookrunner simulate %s`)",
        call_id,
        len(lines),
        path,
        path,
    )
    return len(lines)
