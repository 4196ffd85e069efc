"""The journal (``[state] path``): what the runner must not forget when it is killed, in one SQLite file.

Today it holds every outbox message from ``submit`` until it is delivered or dead-lettered, with its attempt
count, so ``hookrunner run`` after a kill -9, the OOM killer or a reboot sends each one again with its original
id (receivers deduplicate on it), in its key's order; the delivery ids of accepted Atoms webhooks for a day, so a
signed push replayed after a restart is still recognised; and the calls being followed with the ids of the events
already dispatched, so a restart follows them again without dispatching those twice (events received but not
yet dispatched are the next slice).

Writes never wait on the disk inside a hook: they are gathered for ``[state] commit_interval`` and written in
one transaction from a worker thread (group commit: one fsync per interval, not per message). A message
submitted and delivered within one interval never touches the disk at all. The bound this gives: a kill loses at
most what was submitted in the last ``commit_interval``. SQLite runs in WAL mode with ``synchronous=NORMAL``,
which survives the process being killed at any instruction (a power cut may lose the last commits).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import trio

from .errors import ConfigError
from .text import json_bytes

if TYPE_CHECKING:
    from .outbox import OutboxMessage

__all__ = ["Journal", "OutboxJournal", "JournaledMessage"]

log = logging.getLogger("hookrunner.journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    handle TEXT PRIMARY KEY,
    plugin TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt TEXT
);
CREATE INDEX IF NOT EXISTS outbox_by_endpoint ON outbox (plugin, endpoint, seq);
CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS calls (call_id TEXT PRIMARY KEY, source TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dispatched (call_id TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (call_id, key));
"""
#: How long an accepted platform webhook's delivery id is remembered (a replay within it is acknowledged, ignored).
DELIVERY_WINDOW = 24 * 3600.0


@dataclass(frozen=True)
class JournaledMessage:
    """A message found in the journal at start: not delivered nor dead-lettered by the run that submitted it."""

    handle: str
    id: str
    key: str
    body: Any
    attempts: int
    first_attempt: datetime | None


class Journal:
    """One journal file; ``run`` (in the runner's nursery) writes what was gathered, ``close`` writes the rest."""

    def __init__(self, path: Path, commit_interval: float, *, source: str = "state.path") -> None:
        self.path = path
        self.commit_interval = commit_interval
        self._lock = threading.Lock()  # the worker thread's commit and close's last one never overlap
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"{source}: cannot open the journal {path} ({exc})") from None
        self._adds: dict[str, tuple[Any, ...]] = {}  # handle -> row, in submission order
        self._done: list[str] = []
        self._attempts: dict[str, tuple[int, str | None]] = {}
        self._deliveries: list[tuple[str, float]] = []
        self._calls: list[tuple[str, str, float]] = []
        self._dispatched: list[tuple[str, str]] = []
        self._calls_over: list[str] = []
        self._wanted = trio.Event()
        self.closed = False

    # --- what the outboxes say -------------------------------------------------------------------------------

    def for_outbox(self, plugin: str, endpoint: str) -> OutboxJournal:
        return OutboxJournal(self, plugin, endpoint)

    def _add(self, plugin: str, endpoint: str, message: OutboxMessage) -> str:
        handle = uuid.uuid4().hex
        self._seq += 1
        self._adds[handle] = (handle, plugin, endpoint, self._seq, message.id, message.key, json_bytes(message.body))
        self._wake()
        return handle

    def _finished(self, handle: str) -> None:
        self._attempts.pop(handle, None)
        if self._adds.pop(handle, None) is None:  # (submitted and finished within one interval: never written)
            self._done.append(handle)
            self._wake()

    def _attempted(self, handle: str, attempts: int, first_attempt: datetime | None) -> None:
        self._attempts[handle] = (attempts, None if first_attempt is None else first_attempt.isoformat())
        self._wake()

    def _wake(self) -> None:
        self._wanted.set()

    def delivery_accepted(self, delivery_id: str) -> None:
        """Remember an accepted platform webhook's id (for ``DELIVERY_WINDOW``)."""
        self._deliveries.append((delivery_id, time.time()))
        self._wake()

    def call_followed(self, call_id: str, source: str) -> None:
        """A call is being followed: a restart follows it again unless it is over by then."""
        self._calls.append((call_id, source, time.time()))
        self._wake()

    def event_dispatched(self, call_id: str, key: str) -> None:
        """An event of a followed call reached every plugin: a restart does not dispatch it again."""
        self._dispatched.append((call_id, key))
        self._wake()

    def call_over(self, call_id: str) -> None:
        """The call ended for good: forget it and its events."""
        self._calls_over.append(call_id)
        self._wake()

    def followed_calls(self) -> list[str]:
        """The calls a previous run was following when it stopped, oldest first."""
        return [row[0] for row in self._db.execute("SELECT call_id FROM calls ORDER BY since").fetchall()]

    def dispatched_keys(self, call_id: str) -> list[str]:
        """The dedupe keys of the events of ``call_id`` already dispatched (by a previous run too)."""
        return [row[0] for row in self._db.execute("SELECT key FROM dispatched WHERE call_id = ?", (call_id,)).fetchall()]

    def accepted_deliveries(self, limit: int) -> list[str]:
        """The ids of platform webhooks accepted within ``DELIVERY_WINDOW``, oldest first, at most ``limit``."""
        since = time.time() - DELIVERY_WINDOW
        self._db.execute("DELETE FROM deliveries WHERE seen < ?", (since,))
        rows = self._db.execute(
            "SELECT id FROM (SELECT id, seen FROM deliveries ORDER BY seen DESC LIMIT ?) ORDER BY seen", (limit,)
        ).fetchall()
        return [row[0] for row in rows]

    def pending(self, plugin: str, endpoint: str) -> list[JournaledMessage]:
        """What a previous run left for this outbox, oldest first."""
        rows = self._db.execute(
            "SELECT handle, id, key, body, attempts, first_attempt FROM outbox WHERE plugin = ? AND endpoint = ? "
            "ORDER BY seq",
            (plugin, endpoint),
        ).fetchall()
        return [
            JournaledMessage(
                handle=handle,
                id=message_id,
                key=key,
                body=msgspec.json.decode(body),
                attempts=attempts,
                first_attempt=None if first is None else datetime.fromisoformat(first),
            )
            for handle, message_id, key, body, attempts, first in rows
        ]

    # --- writing -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit what was gathered, every ``commit_interval`` while there is something to write."""
        while True:
            await self._wanted.wait()
            await trio.sleep(self.commit_interval)
            self._wanted = trio.Event()
            batch = self._take()
            await trio.to_thread.run_sync(self._commit, batch)  # not abandoned on cancel: it finishes

    def _take(self) -> _Batch:
        batch = _Batch(
            list(self._adds.values()), self._done, self._attempts, self._deliveries, self._calls, self._dispatched,
            self._calls_over,
        )  # fmt: skip
        self._adds, self._done, self._attempts, self._deliveries = {}, [], {}, []
        self._calls, self._dispatched, self._calls_over = [], [], []
        return batch

    def _commit(self, batch: _Batch) -> None:
        adds, done, attempts, deliveries, calls, dispatched, calls_over = batch
        if not any(batch):
            return
        with self._lock:
            if self.closed:
                return
            try:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO outbox (handle, plugin, endpoint, seq, id, key, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    adds,
                )
                self._db.executemany(
                    "UPDATE outbox SET attempts = ?, first_attempt = ? WHERE handle = ?",
                    [(count, first, handle) for handle, (count, first) in attempts.items()],
                )
                self._db.executemany("DELETE FROM outbox WHERE handle = ?", [(handle,) for handle in done])
                self._db.executemany("INSERT OR REPLACE INTO deliveries (id, seen) VALUES (?, ?)", deliveries)
                self._db.executemany("INSERT OR IGNORE INTO calls (call_id, source, since) VALUES (?, ?, ?)", calls)
                self._db.executemany("INSERT OR IGNORE INTO dispatched (call_id, key) VALUES (?, ?)", dispatched)
                over = [(call_id,) for call_id in calls_over]
                self._db.executemany("DELETE FROM calls WHERE call_id = ?", over)
                self._db.executemany("DELETE FROM dispatched WHERE call_id = ?", over)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # the disk is full, the file went away: the run goes on, in memory
                log.error("journal %s: a commit failed (%s); %d messages are only in memory", self.path, exc, len(adds))
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def close(self) -> None:
        """Write what is still gathered and close the file (at the end of the run)."""
        self._commit(self._take())
        with self._lock:
            self.closed = True
            self._db.close()


class _Batch(NamedTuple):
    """What one commit writes."""

    adds: list[tuple[Any, ...]]
    done: list[str]
    attempts: dict[str, tuple[int, str | None]]
    deliveries: list[tuple[str, float]]
    calls: list[tuple[str, str, float]]
    dispatched: list[tuple[str, str]]
    calls_over: list[str]


class OutboxJournal:
    """One outbox's view of the journal (its plugin and endpoint name are the key of its rows)."""

    def __init__(self, journal: Journal, plugin: str, endpoint: str) -> None:
        self._journal = journal
        self.plugin = plugin
        self.endpoint = endpoint

    def add(self, message: OutboxMessage) -> str:
        """Journal a message just accepted; its handle."""
        return self._journal._add(self.plugin, self.endpoint, message)

    def finished(self, handle: str) -> None:
        """The message was delivered or dead-lettered: forget it."""
        self._journal._finished(handle)

    def attempted(self, message: OutboxMessage) -> None:
        if message.journal_handle is not None:
            self._journal._attempted(message.journal_handle, message.attempts, message.first_attempt)

    def pending(self) -> list[JournaledMessage]:
        return self._journal.pending(self.plugin, self.endpoint)
