"""The journal (``[state] path``): what the runner must not forget when it is killed, in one SQLite file.

It holds:

- every outbox message from ``submit`` until it is delivered or dead-lettered, with its attempt count and the
  time of its next attempt, so ``hookrunner run`` after a kill -9, the OOM killer or a reboot sends each one
  again with its original id (receivers deduplicate on it), in its key's order, going on with its retry
  schedule; delivered ones stay for ``[state] keep`` (at most ``[state] max_kept``) so ``hookrunner replay`` can
  send them again;
- the calls being followed, the ids of their events already dispatched (a restart follows them again without
  dispatching those twice), and their events received but not yet dispatched (a restart dispatches them first);
- accepted Atoms webhooks not yet handed to plugins, and the delivery ids of accepted ones for a day, so a signed
  push replayed after a restart is still recognised.

Writes never wait on the disk inside a hook: they are gathered for ``[state] commit_interval`` and written in
one transaction from a worker thread (group commit: one fsync per interval, not per message). An event received
and dispatched within one interval is never written as received at all. The bound this gives: a kill loses at
most what was gathered in the last ``commit_interval``, and dispatches again at most the events dispatched in it
(the one whose hook was running included). SQLite runs in WAL mode with ``synchronous=NORMAL``, which survives
the process being killed at any instruction (a power cut may lose the last commits).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections import deque
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
    from .platform_webhooks import PlatformDelivery

__all__ = ["Journal", "JournalReader", "work_left", "OutboxJournal", "CallJournal", "JournaledMessage", "KeptMessage"]

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
    first_attempt TEXT,
    submitted REAL,
    delivered REAL,
    next_attempt REAL
);
CREATE INDEX IF NOT EXISTS outbox_by_endpoint ON outbox (plugin, endpoint, seq);
CREATE INDEX IF NOT EXISTS outbox_kept ON outbox (delivered) WHERE delivered IS NOT NULL;
CREATE TABLE IF NOT EXISTS received (
    seq INTEGER PRIMARY KEY, call_id TEXT NOT NULL, data TEXT NOT NULL, received REAL NOT NULL,
    backfilled INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS received_by_call ON received (call_id, seq);
CREATE TABLE IF NOT EXISTS platform (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS calls (call_id TEXT PRIMARY KEY, source TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dispatched (call_id TEXT NOT NULL, key TEXT NOT NULL, PRIMARY KEY (call_id, key));
"""
#: How long an accepted platform webhook's delivery id is remembered (a replay within it is acknowledged, ignored).
DELIVERY_WINDOW = 24 * 3600.0
#: Seconds between two purges of delivered messages past ``[state] keep`` (and of old delivery ids).
PURGE_INTERVAL = 60.0
#: Columns an older journal file lacks, added when it is opened.
_ADDED_COLUMNS = {"outbox": {"submitted": "REAL", "delivered": "REAL", "next_attempt": "REAL"}}


@dataclass(frozen=True)
class JournaledMessage:
    """A message found in the journal at start: not delivered nor dead-lettered by the run that submitted it."""

    handle: str
    id: str
    key: str
    body: Any
    attempts: int
    first_attempt: datetime | None
    next_attempt: float | None  # epoch seconds: when its retry schedule said to try again


@dataclass(frozen=True)
class KeptMessage:
    """A delivered message kept for ``[state] keep``: what ``hookrunner replay`` sends again."""

    plugin: str
    endpoint: str
    id: str
    key: str
    body: Any
    submitted: float | None  # epoch seconds
    delivered: float


def work_left(path: Path) -> int:
    """How many calls, events, messages and platform webhooks a previous run left in the journal at ``path`` for
    the next run to resume (0 when there is no such file). Read only: a run that finds nothing opens nothing."""
    if not path.is_file():
        return 0
    try:
        reader = JournalReader.open_read_only(path)
        try:
            return reader.work_left()
        finally:
            reader.close()
    except sqlite3.Error:
        return 0  # an older or damaged file: the run opens it and says what is wrong


class JournalReader:
    """The journal's queries. ``open_read_only`` is for a reader beside a running ``hookrunner run`` (replay, the
    start of ``run`` deciding whether there is work left): it never writes, creates or converts the file."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @classmethod
    def open_read_only(cls, path: Path) -> JournalReader:
        """Raises ``sqlite3.Error`` when the file cannot be read."""
        return cls(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True))

    def close(self) -> None:
        self._db.close()

    def work_left(self) -> int:
        """How many calls, events, messages and platform webhooks a previous run left to resume."""
        return sum(
            self._db.execute(query).fetchone()[0]
            for query in (
                "SELECT COUNT(*) FROM calls",
                "SELECT COUNT(*) FROM received",
                "SELECT COUNT(*) FROM outbox WHERE delivered IS NULL",
                "SELECT COUNT(*) FROM platform",
            )
        )

    def followed_calls(self) -> list[str]:
        """The calls a previous run was following when it stopped (or whose events it left undispatched), oldest
        first."""
        rows = self._db.execute(
            "SELECT call_id FROM (SELECT call_id, since FROM calls UNION "
            "SELECT call_id, MIN(received) FROM received WHERE call_id NOT IN (SELECT call_id FROM calls) "
            "GROUP BY call_id) ORDER BY since"
        ).fetchall()
        return [row[0] for row in rows]

    def dispatched_keys(self, call_id: str) -> list[str]:
        """The dedupe keys of the events of ``call_id`` already dispatched (by a previous run too)."""
        return [row[0] for row in self._db.execute("SELECT key FROM dispatched WHERE call_id = ?", (call_id,)).fetchall()]

    def undispatched_events(self, call_id: str) -> list[tuple[int, str, float, bool]]:
        """Events of ``call_id`` a previous run received and did not dispatch: (seq, line, received at,
        backfilled), in order."""
        rows = self._db.execute(
            "SELECT seq, data, received, backfilled FROM received WHERE call_id = ? ORDER BY seq", (call_id,)
        ).fetchall()
        return [(seq, data, received, bool(backfilled)) for seq, data, received, backfilled in rows]

    def undispatched_platform_webhooks(self) -> list[tuple[int, bytes]]:
        """Platform webhooks a previous run accepted and did not hand to plugins: (seq, body), in order."""
        return self._db.execute("SELECT seq, body FROM platform ORDER BY seq").fetchall()

    def pending(self, plugin: str, endpoint: str) -> list[JournaledMessage]:
        """What a previous run left for this outbox, oldest first."""
        rows = self._db.execute(
            "SELECT handle, id, key, body, attempts, first_attempt, next_attempt FROM outbox "
            "WHERE plugin = ? AND endpoint = ? AND delivered IS NULL ORDER BY seq",
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
                next_attempt=next_attempt,
            )
            for handle, message_id, key, body, attempts, first, next_attempt in rows
        ]

    def kept_messages(
        self, since: float, *, endpoint: str | None = None, call_id: str | None = None
    ) -> list[KeptMessage]:
        """Delivered messages submitted at ``since`` (epoch seconds) or later and still kept, oldest first;
        only ``endpoint``'s, only those of ``call_id`` (their ordering key) when given."""
        query = (
            "SELECT plugin, endpoint, id, key, body, submitted, delivered FROM outbox "
            "WHERE delivered IS NOT NULL AND COALESCE(submitted, delivered) >= ?"
        )
        arguments: list[Any] = [since]
        if endpoint is not None:
            query += " AND endpoint = ?"
            arguments.append(endpoint)
        if call_id is not None:
            query += " AND key = ?"
            arguments.append(call_id)
        rows = self._db.execute(query + " ORDER BY seq", arguments).fetchall()
        return [
            KeptMessage(plugin, name, message_id, key, msgspec.json.decode(body), submitted, delivered)
            for plugin, name, message_id, key, body, submitted, delivered in rows
        ]

    def kept_endpoints(self) -> list[str]:
        """The endpoint names that have delivered messages kept."""
        rows = self._db.execute("SELECT DISTINCT endpoint FROM outbox WHERE delivered IS NOT NULL ORDER BY 1")
        return [row[0] for row in rows.fetchall()]


class Journal(JournalReader):
    """One journal file; ``run`` (in the runner's nursery) writes what was gathered, ``close`` writes the rest."""

    def __init__(
        self,
        path: Path,
        commit_interval: float,
        *,
        keep: float = 0.0,
        max_kept: int = 1_000_000,
        source: str = "state.path",
    ) -> None:
        self.path = path
        self.commit_interval = commit_interval
        self.keep = keep  # seconds a delivered message stays (0: forgotten once delivered)
        self.max_kept = max_kept
        self._lock = threading.Lock()  # the worker thread's commit and close's last one never overlap
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            super().__init__(sqlite3.connect(path, check_same_thread=False, isolation_level=None))
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._add_missing_columns()
            self._db.executescript(_SCHEMA)
            self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
            self._received_seq = self._db.execute(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM received), 0), COALESCE((SELECT MAX(seq) FROM platform), 0))"
            ).fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"{source}: cannot open the journal {path} ({exc})") from None
        self._adds: dict[str, tuple[Any, ...]] = {}  # handle -> row, in submission order
        self._done: list[str] = []
        self._kept: list[tuple[float, str]] = []  # (delivered at, handle) of rows already written
        self._attempts: dict[str, tuple[int, str | None, float | None]] = {}
        self._deliveries: list[tuple[str, float]] = []
        self._calls: list[tuple[str, str, float]] = []
        self._dispatched: list[tuple[str, str]] = []
        self._calls_over: list[str] = []
        self._received: dict[int, tuple[int, str, str, float, bool]] = {}  # seq -> row, not yet written
        self._received_done: list[int] = []
        self._platform: dict[int, tuple[int, bytes]] = {}
        self._platform_done: list[int] = []
        self._next_purge = 0.0
        self._wanted = trio.Event()
        self.closed = False

    def _add_missing_columns(self) -> None:
        for table, columns in _ADDED_COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if not have:
                continue  # a new file: the schema creates the table whole
            for column, kind in columns.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    # --- what the outboxes say -------------------------------------------------------------------------------

    def for_outbox(self, plugin: str, endpoint: str) -> OutboxJournal:
        return OutboxJournal(self, plugin, endpoint)

    def _add(self, plugin: str, endpoint: str, message: OutboxMessage) -> str:
        handle = uuid.uuid4().hex
        self._seq += 1
        self._adds[handle] = (
            handle, plugin, endpoint, self._seq, message.id, message.key, json_bytes(message.body), time.time(), None
        )  # fmt: skip
        self._wake()
        return handle

    def _finished(self, handle: str, delivered: bool) -> None:
        self._attempts.pop(handle, None)
        if delivered and self.keep > 0:  # kept for replay: written even if it never was
            now = time.time()
            row = self._adds.get(handle)
            if row is not None:
                self._adds[handle] = (*row[:-1], now)
            else:
                self._kept.append((now, handle))
            self._wake()
        elif self._adds.pop(handle, None) is None:  # (submitted and finished within one interval: never written)
            self._done.append(handle)
            self._wake()

    def _attempted(self, handle: str, attempts: int, first_attempt: datetime | None, not_before: float | None) -> None:
        self._attempts[handle] = (attempts, None if first_attempt is None else first_attempt.isoformat(), not_before)
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

    def for_call(self, call_id: str) -> CallJournal:
        return CallJournal(self, call_id)

    def _event_received(self, call_id: str, data: str, received_at: float, backfilled: bool) -> int:
        self._received_seq += 1
        self._received[self._received_seq] = (self._received_seq, call_id, data, received_at, backfilled)
        self._wake()
        return self._received_seq

    def _event_dispatched(self, call_id: str, key: str | None, seq: int | None) -> None:
        if key is not None:
            self._dispatched.append((call_id, key))
        if seq is not None and self._received.pop(seq, None) is None:
            self._received_done.append(seq)
        self._wake()

    def platform_received(self, delivery: PlatformDelivery) -> int:
        """An accepted platform webhook, until ``platform_dispatched``: a restart hands it to plugins then."""
        self._received_seq += 1
        self._platform[self._received_seq] = (self._received_seq, json_bytes(delivery.body))
        self._wake()
        return self._received_seq

    def platform_dispatched(self, seq: int) -> None:
        if self._platform.pop(seq, None) is None:
            self._platform_done.append(seq)
            self._wake()

    def call_over(self, call_id: str) -> None:
        """The call ended for good: forget it and its events."""
        self._calls_over.append(call_id)
        self._wake()

    def accepted_deliveries(self, limit: int) -> list[str]:
        """The ids of platform webhooks accepted within ``DELIVERY_WINDOW``, oldest first, at most ``limit``."""
        since = time.time() - DELIVERY_WINDOW
        self._db.execute("DELETE FROM deliveries WHERE seen < ?", (since,))
        rows = self._db.execute(
            "SELECT id FROM (SELECT id, seen FROM deliveries ORDER BY seen DESC LIMIT ?) ORDER BY seen", (limit,)
        ).fetchall()
        return [row[0] for row in rows]

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
        now = time.time()
        purge = now >= self._next_purge
        if purge:
            self._next_purge = now + PURGE_INTERVAL
        batch = _Batch(
            list(self._adds.values()), self._done, self._kept, self._attempts, self._deliveries, self._calls,
            self._dispatched, self._calls_over, list(self._received.values()), self._received_done,
            list(self._platform.values()), self._platform_done, purge,
        )  # fmt: skip
        self._adds, self._done, self._kept, self._attempts, self._deliveries = {}, [], [], {}, []
        self._calls, self._dispatched, self._calls_over = [], [], []
        self._received, self._received_done, self._platform, self._platform_done = {}, [], {}, []
        return batch

    def _commit(self, batch: _Batch) -> None:
        if not any(batch[:-1]):
            return
        with self._lock:
            if self.closed:
                return
            try:
                self._db.execute("BEGIN")
                self._write(batch)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # the disk is full, the file went away: the run goes on, in memory
                log.error(
                    "journal %s: a commit failed (%s); %d messages and %d events are only in memory",
                    self.path,
                    exc,
                    len(batch.adds),
                    len(batch.received),
                )
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def _write(self, batch: _Batch) -> None:
        db = self._db
        db.executemany(
            "INSERT OR REPLACE INTO outbox (handle, plugin, endpoint, seq, id, key, body, submitted, delivered) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            batch.adds,
        )
        db.executemany(
            "UPDATE outbox SET attempts = ?, first_attempt = ?, next_attempt = ? WHERE handle = ?",
            [(count, first, not_before, handle) for handle, (count, first, not_before) in batch.attempts.items()],
        )
        db.executemany("UPDATE outbox SET delivered = ? WHERE handle = ?", batch.kept)
        db.executemany("DELETE FROM outbox WHERE handle = ?", [(handle,) for handle in batch.done])
        db.executemany("INSERT OR REPLACE INTO deliveries (id, seen) VALUES (?, ?)", batch.deliveries)
        db.executemany("INSERT OR IGNORE INTO calls (call_id, source, since) VALUES (?, ?, ?)", batch.calls)
        db.executemany("INSERT OR IGNORE INTO dispatched (call_id, key) VALUES (?, ?)", batch.dispatched)
        db.executemany(
            "INSERT OR REPLACE INTO received (seq, call_id, data, received, backfilled) VALUES (?, ?, ?, ?, ?)",
            batch.received,
        )
        db.executemany("DELETE FROM received WHERE seq = ?", [(seq,) for seq in batch.received_done])
        db.executemany("INSERT OR REPLACE INTO platform (seq, body) VALUES (?, ?)", batch.platform)
        db.executemany("DELETE FROM platform WHERE seq = ?", [(seq,) for seq in batch.platform_done])
        over = [(call_id,) for call_id in batch.calls_over]
        db.executemany("DELETE FROM calls WHERE call_id = ?", over)
        db.executemany("DELETE FROM dispatched WHERE call_id = ?", over)
        db.executemany("DELETE FROM received WHERE call_id = ?", over)
        if batch.purge:
            self._purge()

    def _purge(self) -> None:
        """Delivered messages past ``keep``, and beyond the newest ``max_kept``; delivery ids past their window."""
        now = time.time()
        self._db.execute("DELETE FROM outbox WHERE delivered IS NOT NULL AND delivered < ?", (now - self.keep,))
        self._db.execute(
            "DELETE FROM outbox WHERE delivered IS NOT NULL AND delivered <= (SELECT delivered FROM outbox "
            "WHERE delivered IS NOT NULL ORDER BY delivered DESC LIMIT 1 OFFSET ?)",
            (self.max_kept,),
        )
        self._db.execute("DELETE FROM deliveries WHERE seen < ?", (now - DELIVERY_WINDOW,))

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
    kept: list[tuple[float, str]]
    attempts: dict[str, tuple[int, str | None, float | None]]
    deliveries: list[tuple[str, float]]
    calls: list[tuple[str, str, float]]
    dispatched: list[tuple[str, str]]
    calls_over: list[str]
    received: list[tuple[int, str, str, float, bool]]
    received_done: list[int]
    platform: list[tuple[int, bytes]]
    platform_done: list[int]
    purge: bool  # (last: a flag, not something to write)


class OutboxJournal:
    """One outbox's view of the journal (its plugin and endpoint name are the key of its rows)."""

    def __init__(self, journal: Journal, plugin: str, endpoint: str) -> None:
        self._journal = journal
        self.plugin = plugin
        self.endpoint = endpoint

    def add(self, message: OutboxMessage) -> str:
        """Journal a message just accepted; its handle."""
        return self._journal._add(self.plugin, self.endpoint, message)

    def finished(self, handle: str, *, delivered: bool = False) -> None:
        """The message was delivered (kept for ``[state] keep``) or dead-lettered (forgotten)."""
        self._journal._finished(handle, delivered)

    def attempted(self, message: OutboxMessage) -> None:
        if message.journal_handle is not None:
            self._journal._attempted(message.journal_handle, message.attempts, message.first_attempt, message.not_before)

    def pending(self) -> list[JournaledMessage]:
        return self._journal.pending(self.plugin, self.endpoint)


class CallJournal:
    """One followed call's view of the journal: its events from received to dispatched, in stream order.

    The call's buffer is first in, first out, so the sequence numbers of the events received and not yet dispatched
    are a queue: ``dispatched`` takes the oldest."""

    def __init__(self, journal: Journal, call_id: str) -> None:
        self._journal = journal
        self.call_id = call_id
        self._in_buffer: deque[int | None] = deque()
        #: Set when something this run owed the call was cut short (a stop during its backfill): the call stays
        #: in the journal, and the next run finishes it.
        self.unfinished = False

    def received(self, data: str, received_at: float, backfilled: bool = False) -> None:
        """An event line passed on to the call's buffer (after dedupe)."""
        self._in_buffer.append(self._journal._event_received(self.call_id, data, received_at, backfilled))

    def restored(self, seq: int) -> None:
        """An event a previous run left undispatched, put in the buffer again (its row is already written)."""
        self._in_buffer.append(seq)

    def dispatched(self, key: str | None) -> None:
        """The oldest event in the buffer reached every plugin: out of ``received``, its key into ``dispatched``."""
        seq = self._in_buffer.popleft() if self._in_buffer else None
        self._journal._event_dispatched(self.call_id, key, seq)

    @property
    def undispatched(self) -> int:
        """Events received and not dispatched (they stay in the journal for the next run)."""
        return len(self._in_buffer)
