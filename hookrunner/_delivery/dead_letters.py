"""The dead-letter file: messages an outbox could not deliver, one JSON object a line, ready for redelivery.

Each line says which plugin and endpoint it was for, the message's id (the receiver's idempotency key, kept on
redelivery), its body, why it ended here and how its attempts went. Lines are flushed and fsynced as they are
written, so a crash right after cannot lose them. ``hookrunner redeliver`` reads them back and removes each line
only once it has been delivered, rewriting the file atomically under a lock, so an interrupted redelivery can simply be rerun.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import msgspec

from hookrunner._core.logs import log_fields
from hookrunner._core.text import json_line

if TYPE_CHECKING:
    from hookrunner._delivery.messages import OutboxMessage

__all__ = ["DeadLetterFile", "DeadLetter", "read_dead_letters", "rewrite_dead_letters"]

log = logging.getLogger("hookrunner.dead_letters")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


class DeadLetterFile:
    """Appends dead letters to one JSONL file (shared by every outbox that names the same path)."""

    def __init__(self, path: Path, *, config_path: Path | None = None) -> None:
        self.path = path
        self._config_path = config_path

    def append(
        self, plugin: str, endpoint: str, messages: Iterable[OutboxMessage], reason: str, *, quiet: bool = False
    ) -> None:
        """Write ``messages`` with ``reason``; one warning per write unless ``quiet`` (an endpoint stopped for the
        run says so once, then its messages are only counted). Never raises: a failed write goes to the log."""
        now = _iso(datetime.now(timezone.utc))
        records = [
            {
                "plugin": plugin,
                "endpoint": endpoint,
                "id": message.id,
                "key": message.key,
                "reason": reason,
                "status": message.last_status,
                "error": message.last_error,
                "attempts": message.attempts,
                "first_attempt": _iso(message.first_attempt),
                "last_attempt": _iso(message.last_attempt),
                "dead_lettered_at": now,
                "config": str(self._config_path) if self._config_path else None,
                "body": message.body,
            }
            for message in messages
        ]
        if not records:
            return
        data = b"".join(json_line(record) for record in records)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _locked_append(self.path) as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            # The last place left: the log, whole, so the messages can still be recovered by hand.
            fields = log_fields(plugin=plugin, endpoint=endpoint)
            log.error(
                "%s: cannot write the dead-letter file %s (%s); the messages follow", endpoint, self.path, exc.strerror,
                extra=fields,
            )  # fmt: skip
            for line in data.decode("utf-8", "replace").splitlines():
                log.error("dead letter: %s", line, extra=fields)
            return
        if not quiet:
            log.warning(
                "%s: %d message(s) written to the dead-letter file %s (%s)", endpoint, len(records), self.path, reason,
                extra=log_fields(plugin=plugin, endpoint=endpoint),
            )  # fmt: skip


@dataclass
class DeadLetter:
    line_number: int
    record: dict[str, Any]

    @property
    def endpoint(self) -> str:
        return str(self.record.get("endpoint"))

    @property
    def plugin(self) -> str:
        return str(self.record.get("plugin"))


def read_dead_letters(path: Path) -> list[DeadLetter]:
    """Every line of a dead-letter file; a line that is not a JSON object is reported and kept out of the list."""
    letters = []
    decoder = msgspec.json.Decoder()
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = decoder.decode(line)
            except msgspec.DecodeError:
                record = None
            if not isinstance(record, dict) or not all(key in record for key in ("plugin", "endpoint", "id", "body")):
                log.error("%s:%d: not a dead letter; left in the file", path, number)
                continue
            letters.append(DeadLetter(number, record))
    return letters


def rewrite_dead_letters(path: Path, delivered: set[tuple[str, str, str]]) -> None:
    """Drop the lines of delivered messages (by plugin, endpoint and id), atomically: write a sibling, fsync, rename over.

    Holds the file's lock meanwhile, so a runner appending to the same file at the same time loses nothing.
    """
    with path.open("rb") as original:
        fcntl.flock(original.fileno(), fcntl.LOCK_EX)
        kept = [line for line in original.readlines() if _identity(line) not in delivered]
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as handle:
            handle.writelines(kept)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)


def _identity(line: bytes) -> tuple[str, str, str] | None:
    try:
        record = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return None
    if not isinstance(record, dict):
        return None
    return (str(record.get("plugin")), str(record.get("endpoint")), str(record.get("id")))


@contextmanager
def _locked_append(path: Path) -> Iterator[BinaryIO]:
    """Open ``path`` for appending under an exclusive lock, on the file the path names once the lock is held
    (a redelivery may have renamed a new file over it while this waited)."""
    while True:
        handle = path.open("ab")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        yield handle
    finally:
        handle.close()  # closing releases the lock
